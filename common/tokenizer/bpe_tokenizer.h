// A Hugging Face tokenizer.json byte-level BPE tokenizer (GPT-2, Llama-3 and GLM layouts).
//
// Encode: added tokens are cut out of the text first (longest match at the leftmost position),
// the stretches between them go through the pre-tokenizer (Split regexes, ByteLevel) and then
// BPE by merge rank, per word. Decode: each id's bytes (the byte-level spelling undone),
// concatenated.
//
// Supported: normalizer null; pre_tokenizer ByteLevel or a Sequence of Split and a final
// ByteLevel (see pre_tokenizer.h); model BPE with "a b" or ["a", "b"] merges, ignore_merges,
// unk_token / fuse_unk; decoder ByteLevel. Anything else is refused with an error naming it.
// The post_processor is not applied: Encode returns no template tokens (no BOS), like HF's
// encode(text, add_special_tokens=False).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/tokenizer/added_vocabulary.h"

namespace indexcache {

class BpeModel;
class PreTokenizer;

class BpeTokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFile(const std::string& tokenizer_json_path);
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(std::string_view json);
  ~BpeTokenizer();

  // Token ids of `text`. Thread-safe. Text that is not valid UTF-8 is still encoded (its stray
  // bytes fall between regex matches and are BPE'd as bytes), so Decode(Encode(s)) == s for any s
  // whose bytes all have vocab tokens.
  std::vector<int32_t> Encode(std::string_view text) const;

  // The bytes of `ids` concatenated (UTF-8 when the ids came from Encode; a prefix of a generated
  // sequence may end inside a character, see IncrementalDecoder). Refuses an id outside
  // [0, vocab_size()) or one that no token has. Special added tokens are left out when asked.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens = false) const;

  // 1 + the largest id of the vocab and the added tokens.
  int32_t vocab_size() const { return static_cast<int32_t>(id_bytes_.size()); }
  // Id of a token as spelled in tokenizer.json (added-token content, or vocab key like "Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // True for an added token marked "special" (false for any other or invalid id).
  bool IsSpecial(int32_t id) const;

 private:
  enum class IdKind : uint8_t { kNone, kVocab, kAdded, kSpecial };
  BpeTokenizer() = default;

  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  AddedVocabulary added_;
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // added-token content -> id
  std::vector<std::string> id_bytes_;                    // [vocab_size] bytes each id decodes to
  std::vector<IdKind> id_kinds_;                         // [vocab_size]
};

}  // namespace indexcache
