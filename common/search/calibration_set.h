// The calibration data the layer search scores: token-id windows of at most `context` tokens, cut
// the way `indexcache perplexity` cuts its text (consecutive, non-overlapping; each window's first
// token has no prediction, so a window holds at least 2 tokens and a 1-token remainder is dropped).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/bpe_tokenizer.h"

namespace indexcache {

struct CalibrationSet {
  std::vector<std::vector<int32_t>> windows;

  // Next-token predictions over all windows (Σ (size − 1)): the loss is averaged over these.
  int64_t predicted_tokens() const;
  int32_t longest_window() const;
};

// Appends `ids`' windows of `context` tokens to `set`.
void AppendWindows(const std::vector<int32_t>& ids, int32_t context, CalibrationSet& set);

// Reads `path`: a file whose name ends in ".jsonl" holds one JSON array of token ids per line (one
// document each; blank lines skipped), anything else is UTF-8 text encoded with `tokenizer` (required
// then). Errors name the file and line; ids must lie in [0, vocab_size); at least one window must result.
absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::string& path, int32_t context,
                                                  const BpeTokenizer* tokenizer, int32_t vocab_size);

}  // namespace indexcache
