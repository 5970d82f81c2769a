// The calibration data the layer search scores: token-id windows of at most `context` tokens, cut
// the way `indexcache perplexity` cuts its text (consecutive, non-overlapping; each window's first
// token has no prediction, so a window holds at least 2 tokens and a 1-token remainder is dropped);
// and, optionally, retrieval cases (a prompt that hides a needle, then its answer), of which only the
// answer's tokens are scored: a search that minimizes perplexity alone gives up retrieval first
// (docs/quality.md), so a calibration mix can weigh the answers in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/bpe_tokenizer.h"

namespace indexcache {

// One retrieval case as one sequence: its prompt's tokens, then its answer's.
struct RetrievalCase {
  std::vector<int32_t> tokens;
  int32_t answer_begin = 0;  // index of the answer's first token (>= 1: the prompt is not empty)
};

struct CalibrationSet {
  std::vector<std::vector<int32_t>> windows;
  // Scored beside the windows: the search's objective is then the windows' mean NLL plus
  // retrieval_weight × the mean NLL of the answers' tokens (each given its prompt and the answer's
  // earlier tokens).
  std::vector<RetrievalCase> retrieval;
  double retrieval_weight = 1.0;

  // Next-token predictions the objective counts: Σ (size − 1) over the windows, plus every answer token.
  int64_t predicted_tokens() const;
  // The longest sequence to score (window or retrieval case).
  int32_t longest_window() const;
};

// Appends `ids`' windows of `context` tokens to `set`.
void AppendWindows(const std::vector<int32_t>& ids, int32_t context, CalibrationSet& set);

// Reads `path`: a file whose name ends in ".jsonl" holds one JSON array of token ids per line (one
// document each; blank lines skipped), anything else is UTF-8 text encoded with `tokenizer` (required
// then). Errors name the file and line; ids must lie in [0, vocab_size); at least one window must result.
absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::string& path, int32_t context,
                                                  const BpeTokenizer* tokenizer, int32_t vocab_size);

// Reads retrieval cases from a .jsonl file, one object per line: {"prompt": TEXT, "answer": TEXT}
// (encoded with `tokenizer`, as data/retrieval_test.jsonl holds them) or {"prompt_ids": [...],
// "answer_ids": [...]}; both parts non-empty. Errors name the file and line.
absl::StatusOr<std::vector<RetrievalCase>> LoadRetrievalCases(const std::string& path, const BpeTokenizer* tokenizer,
                                                              int32_t vocab_size);

}  // namespace indexcache
