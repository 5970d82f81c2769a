#include "common/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/tokenizer/split_regex.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

using json = nlohmann::json;

// HF tokenizers' ByteLevel regex (the GPT-2 pattern).
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// A stretch of a piece: a pattern match or the text between two matches.
struct Segment {
  size_t begin;
  size_t end;
  bool match;
};

absl::StatusOr<bool> OptionalBool(const json& spec, const char* key, bool fallback) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer field '", key, "' must be a boolean"));
  }
  return it->get<bool>();
}

absl::StatusOr<PreTokenizer::Behavior> ParseBehavior(const json& spec) {
  auto it = spec.find("behavior");
  if (it == spec.end() || !it->is_string()) {
    return absl::InvalidArgumentError("Split pre_tokenizer needs a string 'behavior'");
  }
  const std::string& name = it->get_ref<const std::string&>();
  using B = PreTokenizer::Behavior;
  if (name == "Removed") return B::kRemoved;
  if (name == "Isolated") return B::kIsolated;
  if (name == "MergedWithPrevious") return B::kMergedWithPrevious;
  if (name == "MergedWithNext") return B::kMergedWithNext;
  if (name == "Contiguous") return B::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("unsupported Split behavior '", name, "'"));
}

// Joins segments as HF tokenizers' SplitDelimiterBehavior does; returns the resulting pieces.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(PreTokenizer::Behavior behavior,
                                                     const std::vector<Segment>& segments) {
  using B = PreTokenizer::Behavior;
  std::vector<std::pair<size_t, size_t>> pieces;
  bool previous_match = false;
  switch (behavior) {
    case B::kRemoved:
      for (const Segment& s : segments) {
        if (!s.match) pieces.emplace_back(s.begin, s.end);
      }
      break;
    case B::kIsolated:
      for (const Segment& s : segments) pieces.emplace_back(s.begin, s.end);
      break;
    case B::kMergedWithPrevious:  // a delimiter joins the piece before it
      for (const Segment& s : segments) {
        if (s.match && !previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
    case B::kMergedWithNext:  // a delimiter joins the piece after it
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->match && !previous_match && !pieces.empty()) {
          pieces.back().first = it->begin;
        } else {
          pieces.emplace_back(it->begin, it->end);
        }
        previous_match = it->match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    case B::kContiguous:  // runs of delimiters become one piece
      for (size_t i = 0; i < segments.size(); ++i) {
        const Segment& s = segments[i];
        if (i > 0 && s.match == previous_match) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.match;
      }
      break;
  }
  return pieces;
}

}  // namespace

PreTokenizer::~PreTokenizer() = default;

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& spec) {
  auto pre = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  if (spec.is_null()) {
    return absl::InvalidArgumentError(
        "pre_tokenizer is null; a byte-level BPE needs a ByteLevel pre_tokenizer");
  }
  RETURN_IF_ERROR(AddSteps(spec, pre.get()));
  if (!pre->saw_byte_level_) {
    return absl::InvalidArgumentError(
        "pre_tokenizer has no ByteLevel step; only byte-level BPE tokenizers are supported");
  }
  return pre;
}

absl::Status PreTokenizer::AddSteps(const json& spec, PreTokenizer* out) {
  if (!spec.is_object() || !spec.contains("type") || !spec["type"].is_string()) {
    return absl::InvalidArgumentError("pre_tokenizer entry must be an object with a string 'type'");
  }
  const std::string& type = spec["type"].get_ref<const std::string&>();
  if (out->saw_byte_level_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pre_tokenizer '", type, "' after ByteLevel is not supported (ByteLevel must come last)"));
  }
  if (type == "Sequence") {
    auto it = spec.find("pretokenizers");
    if (it == spec.end() || !it->is_array()) {
      return absl::InvalidArgumentError("Sequence pre_tokenizer needs a 'pretokenizers' array");
    }
    for (const json& child : *it) RETURN_IF_ERROR(AddSteps(child, out));
    return absl::OkStatus();
  }
  Step step;
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(step.add_prefix_space, OptionalBool(spec, "add_prefix_space", true));
    ASSIGN_OR_RETURN(bool use_regex, OptionalBool(spec, "use_regex", true));
    if (use_regex) {
      ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(kGpt2Pattern));
    }
    out->saw_byte_level_ = true;
    if (!step.add_prefix_space && !use_regex) return absl::OkStatus();  // spelling only: no step
  } else if (type == "Split") {
    auto pattern = spec.find("pattern");
    if (pattern == spec.end() || !pattern->is_object() || pattern->size() != 1) {
      return absl::InvalidArgumentError(
          "Split pre_tokenizer needs a 'pattern' of {\"Regex\": ...} or {\"String\": ...}");
    }
    const std::string kind = pattern->begin().key();
    const json& value = pattern->begin().value();
    if (!value.is_string() || (kind != "Regex" && kind != "String")) {
      return absl::InvalidArgumentError(
          absl::StrCat("Split pattern kind '", kind, "' must be Regex or String with a string value"));
    }
    if (kind == "Regex") {
      ASSIGN_OR_RETURN(step.regex, SplitRegex::Compile(value.get_ref<const std::string&>()));
    } else {
      step.literal = value.get<std::string>();
    }
    ASSIGN_OR_RETURN(step.behavior, ParseBehavior(spec));
    ASSIGN_OR_RETURN(step.invert, OptionalBool(spec, "invert", false));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported pre_tokenizer type '", type, "' (supported: ByteLevel, Split, Sequence)"));
  }
  out->steps_.push_back(std::move(step));
  return absl::OkStatus();
}

void PreTokenizer::ApplyStep(const Step& step, const std::string& piece,
                             std::vector<std::string>* out) {
  std::string prefixed;
  std::string_view text = piece;
  if (step.add_prefix_space && !text.starts_with(' ')) {
    prefixed = absl::StrCat(" ", piece);
    text = prefixed;
  }
  std::vector<Segment> segments;
  size_t covered = 0;
  const auto add_match = [&](size_t begin, size_t end) {
    if (begin > covered) segments.push_back({covered, begin, false});
    segments.push_back({begin, end, true});
    covered = end;
  };
  if (step.regex != nullptr) {
    for (const auto& [begin, end] : step.regex->FindAll(text)) add_match(begin, end);
  } else if (!step.literal.empty()) {
    for (size_t at = text.find(step.literal); at != std::string_view::npos;
         at = text.find(step.literal, covered)) {
      add_match(at, at + step.literal.size());
    }
  }
  if (covered < text.size()) segments.push_back({covered, text.size(), false});
  if (step.invert) {
    for (Segment& s : segments) s.match = !s.match;
  }
  for (const auto& [begin, end] : ApplyBehavior(step.behavior, segments)) {
    if (end > begin) out->emplace_back(text.substr(begin, end - begin));
  }
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string>* words) const {
  if (text.empty()) return;
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  for (const Step& step : steps_) {
    next.clear();
    for (const std::string& piece : pieces) ApplyStep(step, piece, &next);
    pieces.swap(next);
  }
  for (std::string& piece : pieces) words->push_back(std::move(piece));
}

}  // namespace indexcache
