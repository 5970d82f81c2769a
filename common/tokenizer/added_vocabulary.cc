#include "common/tokenizer/added_vocabulary.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/tokenizer/byte_unicode.h"

namespace indexcache {
namespace {

using json = nlohmann::json;

absl::StatusOr<bool> FlagOf(const json& entry, const char* key, size_t index) {
  auto it = entry.find(key);
  if (it == entry.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat("added_tokens[", index, "].", key, " must be a boolean"));
  }
  return it->get<bool>();
}

// Start of the whitespace run that ends at `end` (not before `floor`).
size_t SkipSpaceBackward(std::string_view text, size_t end, size_t floor) {
  size_t begin = end;
  while (begin > floor) {
    size_t start = begin - 1;
    while (start > floor && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    Utf8Char ch = DecodeUtf8At(text, start);
    if (!ch.valid || start + ch.length != begin || !IsUnicodeWhitespace(ch.codepoint)) break;
    begin = start;
  }
  return begin;
}

// End of the whitespace run that starts at `begin`.
size_t SkipSpaceForward(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    Utf8Char ch = DecodeUtf8At(text, begin);
    if (!ch.valid || !IsUnicodeWhitespace(ch.codepoint)) break;
    begin += ch.length;
  }
  return begin;
}

}  // namespace

absl::StatusOr<AddedVocabulary> AddedVocabulary::FromJson(const json& spec) {
  AddedVocabulary vocab;
  if (spec.is_null()) return vocab;
  if (!spec.is_array()) return absl::InvalidArgumentError("added_tokens must be an array");
  for (size_t i = 0; i < spec.size(); ++i) {
    const json& entry = spec[i];
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
        !entry.contains("content") || !entry["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("added_tokens[", i, "] needs an integer 'id' and a string 'content'"));
    }
    AddedToken token;
    token.content = entry["content"].get<std::string>();
    const int64_t id = entry["id"].get<int64_t>();
    if (token.content.empty() || id < 0 || id > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(
          "added_tokens[", i, "] has empty content or an id out of range: ", id));
    }
    token.id = static_cast<int32_t>(id);
    absl::StatusOr<bool> flag = FlagOf(entry, "special", i);
    if (!flag.ok()) return flag.status();
    token.special = *flag;
    for (auto [key, field] : {std::pair{"lstrip", &token.lstrip}, std::pair{"rstrip", &token.rstrip},
                              std::pair{"normalized", &token.normalized}}) {
      flag = FlagOf(entry, key, i);
      if (!flag.ok()) return flag.status();
      *field = *flag;
    }
    flag = FlagOf(entry, "single_word", i);
    if (!flag.ok()) return flag.status();
    if (*flag) {
      return absl::InvalidArgumentError(absl::StrCat(
          "added token '", token.content, "' has single_word: true, which is not supported"));
    }
    Index& index = token.normalized ? vocab.normalized_index_ : vocab.raw_index_;
    index[static_cast<uint8_t>(token.content[0])].push_back(static_cast<int32_t>(i));
    vocab.tokens_.push_back(std::move(token));
  }
  for (Index* index : {&vocab.raw_index_, &vocab.normalized_index_}) {
    for (std::vector<int32_t>& bucket : *index) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
        return vocab.tokens_[a].content.size() > vocab.tokens_[b].content.size();
      });
    }
  }
  return vocab;
}

void AddedVocabulary::SplitWith(const Index& index, std::string_view text,
                                std::vector<Segment>* out) const {
  size_t plain_begin = 0;  // start of the plain text not yet emitted
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* found = nullptr;
    for (int32_t t : index[static_cast<uint8_t>(text[pos])]) {
      if (text.substr(pos).starts_with(tokens_[t].content)) {
        found = &tokens_[t];
        break;
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos;
    size_t end = pos + found->content.size();
    if (found->lstrip) begin = SkipSpaceBackward(text, begin, plain_begin);
    if (found->rstrip) end = SkipSpaceForward(text, end);
    if (begin > plain_begin) out->push_back({text.substr(plain_begin, begin - plain_begin), -1});
    out->push_back({text.substr(begin, end - begin), found->id});
    plain_begin = pos = end;
  }
  if (plain_begin < text.size()) out->push_back({text.substr(plain_begin), -1});
}

std::vector<AddedVocabulary::Segment> AddedVocabulary::Split(std::string_view text) const {
  std::vector<Segment> first;
  SplitWith(raw_index_, text, &first);
  std::vector<Segment> segments;
  segments.reserve(first.size());
  for (const Segment& s : first) {
    if (s.id >= 0) {
      segments.push_back(s);
    } else {
      SplitWith(normalized_index_, s.text, &segments);
    }
  }
  return segments;
}

}  // namespace indexcache
