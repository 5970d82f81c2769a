// The "model" of a byte-level BPE tokenizer.json: vocab and ranked merges, applied to one
// pre-tokenized word at a time.
//
// A word (raw bytes) starts as one symbol per byte (the vocab id of that byte's spelling); then,
// repeatedly, the adjacent pair with the lowest merge rank (leftmost on ties) is replaced by the
// merged token, until no adjacent pair has a merge. Symbols are ids and merges are keyed by id
// pairs, as in HF tokenizers, so a word costs O(n log n) with a heap of candidate pairs. Results
// are cached per word: natural text repeats its words, and the cache makes encoding cost roughly
// the pre-tokenizer's.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace indexcache {

class BpeModel {
 public:
  struct Options {
    // Llama-3 style: a word that is itself in the vocab is emitted whole, merges unused.
    bool ignore_merges = false;
    // Id emitted for a byte whose spelling is not in the vocab; without one such bytes are
    // dropped (what HF does when unk_token is null).
    std::optional<int32_t> unk_id;
    bool fuse_unk = false;  // consecutive unknown bytes become a single unk
  };

  // `vocab`: token spelling (byte-level, as in tokenizer.json) -> id. `merges`: (left, right)
  // spellings, highest priority first; both halves and their concatenation must be in the vocab.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      absl::flat_hash_map<std::string, int32_t> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, Options options);

  // Appends the ids of `word` (raw bytes). Thread-safe.
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;

  const absl::flat_hash_map<std::string, int32_t>& vocab() const { return vocab_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  BpeModel() = default;
  std::vector<int32_t> MergeWord(std::string_view word) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::array<int32_t, 256> byte_ids_{};  // id of each byte's one-character token, -1 if absent
  absl::flat_hash_map<uint64_t, Merge> merges_;  // PairKey(left id, right id) -> merge
  Options options_;

  // word bytes -> ids; cleared when it reaches kMaxCacheEntries so memory stays bounded.
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace indexcache
