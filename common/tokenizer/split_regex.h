// A pre-tokenizer regex from tokenizer.json, run with RE2.
//
// Hugging Face tokenizers compiles these patterns with Oniguruma; RE2 differs in three ways that
// matter here, and Compile bridges each:
//  - `\s`, `\d`, `\w` are ASCII-only in RE2 but Unicode in Oniguruma: they are rewritten into
//    explicit Unicode classes (White_Space; Nd; L+M+Nd+Pc).
//  - RE2 has no lookaround. The GPT-2 / Llama-3 / GLM patterns end in the alternatives
//    `\s+(?!\S)|\s+`: a whitespace run is one piece, except that a run followed by a non-space
//    character gives its last whitespace character back, so that " world" stays together
//    ("a   b" -> "a", "  ", " b"). That pair of alternatives, when it stands at the top level of
//    the pattern, is replaced by a capture group `(\s+)`; when the match came from that group, is
//    at least two characters long and is followed by more text (necessarily a non-space, since the
//    group is greedy), FindAll drops its last character and resumes the search there — exactly
//    what the backtracking engine does, because every earlier alternative already failed at that
//    position. Any other lookaround is refused.
//  - Possessive quantifiers and atomic groups are refused (RE2 lacks them); Oniguruma's `\uHHHH`
//    is rewritten as RE2's `\x{HHHH}`.
//  - Unicode property tables are RE2's (\p{L}, \p{N}, ...), which may trail Oniguruma's by a
//    Unicode version for newly assigned characters.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}

namespace indexcache {

class SplitRegex {
 public:
  // `pattern` is the Oniguruma pattern as written in tokenizer.json.
  static absl::StatusOr<std::unique_ptr<SplitRegex>> Compile(std::string_view pattern);
  ~SplitRegex();

  // The [begin, end) byte offsets of the successive non-empty matches in `text`, leftmost first
  // (Oniguruma's find_iter order).
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

  // The pattern handed to RE2 (for error messages and tests).
  const std::string& re2_pattern() const { return re2_pattern_; }

 private:
  SplitRegex() = default;

  std::string re2_pattern_;
  std::unique_ptr<re2::RE2> re_;
  int whitespace_group_ = -1;  // capture index of the emulated `\s+(?!\S)|\s+`, -1 when absent
};

}  // namespace indexcache
