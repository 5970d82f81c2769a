// The "pre_tokenizer" of tokenizer.json: cuts text into the words BPE runs on, so that merges never
// cross a word boundary.
//
// Supported (the GPT-2 and Llama-3 / GLM layouts):
//  - {"type": "ByteLevel", "add_prefix_space": b, "use_regex": b}: optionally prepends a space to
//    every piece not starting with one, then (use_regex, the default) splits it with the GPT-2
//    pattern, isolating the matches;
//  - {"type": "Split", "pattern": {"Regex": "..."} | {"String": "..."}, "behavior": "Removed" |
//    "Isolated" | "MergedWithPrevious" | "MergedWithNext" | "Contiguous", "invert": b};
//  - {"type": "Sequence", "pretokenizers": [...]} of those, applied in order.
// Exactly one ByteLevel, as the last step, is required: it is what makes the vocab byte-level. Its
// byte -> code point spelling is left to the BPE model, so words stay raw bytes here.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"

namespace indexcache {

class SplitRegex;

class PreTokenizer {
 public:
  // `spec` is the tokenizer.json "pre_tokenizer" value; unsupported types are refused by name.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& spec);
  ~PreTokenizer();

  // Appends the non-empty words of `text` (raw bytes) to `words`, in order.
  void Split(std::string_view text, std::vector<std::string>* words) const;

  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

 private:
  // One step: a Split (regex or literal) or the ByteLevel (prefix space + optional GPT-2 regex,
  // whose matches are isolated).
  struct Step {
    std::unique_ptr<SplitRegex> regex;  // null for a literal pattern / ByteLevel without regex
    std::string literal;                // Split with {"String": ...}
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel only
  };
  PreTokenizer() = default;
  static absl::Status AddSteps(const nlohmann::json& spec, PreTokenizer* out);
  static void ApplyStep(const Step& step, const std::string& piece, std::vector<std::string>* out);

  std::vector<Step> steps_;
  bool saw_byte_level_ = false;
};

}  // namespace indexcache
