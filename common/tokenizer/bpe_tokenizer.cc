#include "common/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/tokenizer/bpe_model.h"
#include "common/tokenizer/byte_unicode.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

using json = nlohmann::json;

// Ids beyond this are refused: they would only make the per-id tables huge.
constexpr int64_t kMaxTokenId = (int64_t{1} << 26) - 1;

std::string TypeName(const json& value) {
  if (value.is_object() && value.contains("type") && value["type"].is_string()) {
    return value["type"].get<std::string>();
  }
  return value.dump();
}

absl::Status CheckNormalizer(const json& root) {
  auto it = root.find("normalizer");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported normalizer '", TypeName(*it), "' (only null is supported)"));
}

absl::Status CheckDecoder(const json& root) {
  auto it = root.find("decoder");
  if (it != root.end() && it->is_object() && TypeName(*it) == "ByteLevel") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported decoder '", it == root.end() ? "(absent)" : TypeName(*it),
      "' (only ByteLevel is supported)"));
}

// Reads model.merges: "left right" strings or ["left", "right"] pairs.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseMerges(const json& model) {
  std::vector<std::pair<std::string, std::string>> merges;
  auto it = model.find("merges");
  if (it == model.end() || it->is_null()) return merges;
  if (!it->is_array()) return absl::InvalidArgumentError("model.merges must be an array");
  merges.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const json& entry = (*it)[i];
    if (entry.is_string()) {
      const std::string& line = entry.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", i, "] '", line, "' is not two tokens separated by a space"));
      }
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      merges.emplace_back(entry[0].get<std::string>(), entry[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", i, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
  }
  return merges;
}

absl::StatusOr<std::unique_ptr<BpeModel>> ParseModel(const json& root) {
  auto it = root.find("model");
  if (it == root.end() || !it->is_object()) return absl::InvalidArgumentError("no 'model' object");
  const json& model = *it;
  if (TypeName(model) != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported model type '", TypeName(model), "' (only BPE is supported)"));
  }
  const auto flag = [&](const char* key) {
    auto f = model.find(key);
    return f != model.end() && f->is_boolean() && f->get<bool>();
  };
  const auto non_empty_string = [&](const char* key) {
    auto f = model.find(key);
    return f != model.end() && f->is_string() && !f->get_ref<const std::string&>().empty();
  };
  if (flag("byte_fallback")) return absl::InvalidArgumentError("BPE byte_fallback is not supported");
  if (auto d = model.find("dropout"); d != model.end() && !d->is_null()) {
    return absl::InvalidArgumentError("BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (non_empty_string(key)) {
      return absl::InvalidArgumentError(absl::StrCat("BPE ", key, " is not supported"));
    }
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return absl::InvalidArgumentError("model.vocab must be an object of token -> id");
  }
  absl::flat_hash_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_it->size());
  for (const auto& [token, id] : vocab_it->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.vocab['", token, "'] must be an integer id in [0, ", kMaxTokenId, "]"));
    }
    vocab.emplace(token, static_cast<int32_t>(id.get<int64_t>()));
  }
  ASSIGN_OR_RETURN(auto merges, ParseMerges(model));
  BpeModel::Options options;
  options.ignore_merges = flag("ignore_merges");
  options.fuse_unk = flag("fuse_unk");
  if (auto unk = model.find("unk_token"); unk != model.end() && !unk->is_null()) {
    auto found = unk->is_string() ? vocab.find(unk->get<std::string>()) : vocab.end();
    if (found == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.unk_token ", unk->dump(), " is not a token of the vocab"));
    }
    options.unk_id = found->second;
  }
  return BpeModel::Create(std::move(vocab), merges, options);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> Annotated(
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> result, std::string_view context) {
  if (result.ok()) return result;
  return Annotate(result.status(), context);
}

}  // namespace

BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat("cannot read tokenizer file ", path));
  return Annotated(FromJson(contents.str()), path);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(std::string_view text) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  auto tokenizer = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  RETURN_IF_ERROR(CheckNormalizer(root));
  RETURN_IF_ERROR(CheckDecoder(root));
  ASSIGN_OR_RETURN(tokenizer->model_, ParseModel(root));
  auto pre = root.find("pre_tokenizer");
  ASSIGN_OR_RETURN(tokenizer->pre_tokenizer_,
                   PreTokenizer::FromJson(pre == root.end() ? json(nullptr) : *pre));
  auto added = root.find("added_tokens");
  ASSIGN_OR_RETURN(tokenizer->added_,
                   AddedVocabulary::FromJson(added == root.end() ? json(nullptr) : *added));

  // Per-id tables. A vocab token decodes to the bytes it spells; one holding a character outside
  // the byte map decodes to its own UTF-8, as HF's ByteLevel decoder does. Added tokens go through
  // the same rule and take precedence over a vocab token of the same id.
  int32_t size = 0;
  for (const auto& [token, id] : tokenizer->model_->vocab()) size = std::max(size, id + 1);
  for (const AddedToken& token : tokenizer->added_.tokens()) {
    if (token.id > kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat("added token '", token.content, "' has id ",
                                                     token.id, ", above ", kMaxTokenId));
    }
    size = std::max(size, token.id + 1);
  }
  tokenizer->id_bytes_.assign(size, std::string());
  tokenizer->id_kinds_.assign(size, IdKind::kNone);
  const auto spell = [](const std::string& token) {
    std::optional<std::string> bytes = ByteLevelToBytes(token);
    return bytes ? *std::move(bytes) : token;
  };
  for (const auto& [token, id] : tokenizer->model_->vocab()) {
    tokenizer->id_bytes_[id] = spell(token);
    tokenizer->id_kinds_[id] = IdKind::kVocab;
  }
  for (const AddedToken& token : tokenizer->added_.tokens()) {
    tokenizer->id_bytes_[token.id] = spell(token.content);
    tokenizer->id_kinds_[token.id] = token.special ? IdKind::kSpecial : IdKind::kAdded;
    tokenizer->added_ids_.insert_or_assign(token.content, token.id);
  }
  return tokenizer;
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  std::vector<std::string> words;
  for (const AddedVocabulary::Segment& segment : added_.Split(text)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    words.clear();
    pre_tokenizer_->Split(segment.text, &words);
    for (const std::string& word : words) model_->EncodeWord(word, &ids);
  }
  return ids;
}

absl::StatusOr<std::string> BpeTokenizer::Decode(absl::Span<const int32_t> ids,
                                                 bool skip_special_tokens) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at position ", i,
                                                     " is out of range [0, ", vocab_size(), ")"));
    }
    if (id_kinds_[id] == IdKind::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " at position ", i, " has no token in the vocab"));
    }
    if (skip_special_tokens && id_kinds_[id] == IdKind::kSpecial) continue;
    out.append(id_bytes_[id]);
  }
  return out;
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  const absl::string_view key(token.data(), token.size());
  if (auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (auto it = model_->vocab().find(key); it != model_->vocab().end()) return it->second;
  return std::nullopt;
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && id_kinds_[id] == IdKind::kSpecial;
}

}  // namespace indexcache
