// The "added_tokens" of tokenizer.json (special tokens such as <|endoftext|>, [gMASK], <think>):
// found literally in the input before any pre-tokenization, so their text is never split by BPE.
//
// As HF tokenizers does, tokens with "normalized": false are cut out of the raw text first, then
// those with "normalized": true out of the remaining stretches (no normalizer is supported, so the
// second pass also sees raw text). Each pass takes, at the leftmost position where some token
// matches, the longest token matching there. "lstrip" / "rstrip" tokens also swallow the
// whitespace to their left / right.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"

namespace indexcache {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

class AddedVocabulary {
 public:
  // `spec` is the "added_tokens" value: null or an array of {"id", "content", "special", ...}.
  // "single_word": true is refused.
  static absl::StatusOr<AddedVocabulary> FromJson(const nlohmann::json& spec);

  // A stretch of the input: plain text for the pre-tokenizer (id < 0) or one added token.
  struct Segment {
    std::string_view text;
    int32_t id;
  };
  // Cuts `text` into segments, in order; plain segments are never empty.
  std::vector<Segment> Split(std::string_view text) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Indices into tokens_ by the first byte of their content, longest content first.
  using Index = std::array<std::vector<int32_t>, 256>;
  void SplitWith(const Index& index, std::string_view text, std::vector<Segment>* out) const;

  std::vector<AddedToken> tokens_;
  Index raw_index_;         // "normalized": false
  Index normalized_index_;  // "normalized": true
};

}  // namespace indexcache
