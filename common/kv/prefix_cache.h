// The prefix cache's index: which KV blocks hold which token prefixes, who holds them, and which idle
// ones go first. It only keeps books; PagedKvCache owns the blocks and acts on its answers.
//
// Block i of a sequence (tokens [i·block_size, (i+1)·block_size)) is named by a hash chain:
//   key_0 = H(seed ‖ tokens of block 0),  key_i = H(key_{i-1} ‖ tokens of block i),
//   seed  = H(model fingerprint ‖ layer pattern).
// A key thus names the whole prefix up to its block's end under one model and one IndexCache pattern:
// a block is shared only when every earlier token agrees too, and a block cached under another
// checkpoint or pattern (whose Full layers hold index keys another pattern's do not) is never found.
// Only full blocks get keys: a partial block is still being written.
//
// H is SHA-256 (libcrypto, linked already for the cluster's HMAC). Keys are compared across requests
// from different clients, so a collision would serve one prompt another prompt's KV rows: a fast
// non-cryptographic hash (absl::Hash, FNV) gives no bound against prompts crafted to collide, while
// SHA-256's costs one compression per 16 tokens, far below the forward pass of the same tokens.
//
// References: every sequence whose block table lists a registered block holds one reference to it.
// A registered block nobody holds is idle: still findable, kept in LRU order, and evicted (its id
// handed back to be freed) only when an allocation would otherwise fail — never while held.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace indexcache {

using BlockKey = std::array<uint8_t, 32>;  // SHA-256

// One change to the set of findable keys: `key` became findable (stored) or was evicted.
struct PrefixCacheChange {
  BlockKey key;
  bool stored = false;
};

// Counters since the last PrefixCache::TakeStats. Hit rates: hit_tokens / queried_tokens and
// hit_blocks / queried_blocks.
struct PrefixCacheStats {
  uint64_t queried_tokens = 0;  // tokens of the sequences looked up
  uint64_t hit_tokens = 0;      // of those, found in cached blocks (hit_blocks · block_size)
  uint64_t queried_blocks = 0;  // full blocks looked up
  uint64_t hit_blocks = 0;
  uint64_t evictions = 0;       // idle blocks forgotten to make room

  PrefixCacheStats& operator+=(const PrefixCacheStats& other);
};

class PrefixCache {
 public:
  explicit PrefixCache(int32_t block_size) : block_size_(block_size) {}

  // The chain's start: what two caches must agree on for their blocks to be interchangeable.
  static BlockKey Seed(std::string_view model_fingerprint, std::string_view layer_pattern);
  // The key of the block holding `tokens` after the block keyed `previous` (the seed for block 0).
  static BlockKey Chain(const BlockKey& previous, absl::Span<const int32_t> tokens);
  // Appends to `keys` (the keys of `tokens`' first keys.size() blocks under `seed`) the keys of the
  // blocks up to `count`; `tokens` holds at least `count` full blocks of `block_size`.
  static void ExtendChain(const BlockKey& seed, int32_t block_size, absl::Span<const int32_t> tokens, size_t count,
                          std::vector<BlockKey>& keys);
  // The full blocks of a prompt an engine looks up: those before its last token, which is always
  // computed (its logits sample the first token), so a prompt never hits entirely.
  static int32_t LookupBlocks(size_t prompt_tokens, int32_t block_size);
  // A key's first 8 bytes, little-endian: how the router names blocks (cached_block_log.h). Only
  // placement reads them, so a collision costs a placement, never wrong rows.
  static uint64_t ShortKey(const BlockKey& key);
  // The short keys of a prompt's LookupBlocks under `seed`: what a worker's published keys are
  // matched against (the router's placement, a prefill worker's admission).
  static std::vector<uint64_t> LookupShortKeys(const BlockKey& seed, int32_t block_size,
                                               absl::Span<const int32_t> prompt);

  // The blocks of the longest leading run of `keys` that is cached, in order, each with one more
  // reference (idle ones leave the LRU list). Counts a lookup of `num_tokens` tokens.
  std::vector<int32_t> Acquire(absl::Span<const BlockKey> keys, int32_t num_tokens);
  // Makes `block`, full and held by the one sequence that wrote it, findable under `key`. False,
  // changing nothing, when `key` is cached already: the caller's block stays its private copy.
  bool Register(const BlockKey& key, int32_t block);
  // Drops one reference to `block`; at none it becomes the most recently used idle block. False
  // when `block` is not registered: its only holder frees it.
  bool Drop(int32_t block);
  // Forgets up to `count` idle blocks, least recently used first, and returns them to be freed.
  std::vector<int32_t> Evict(int32_t count);

  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }  // registered
  int32_t num_idle() const { return static_cast<int32_t>(idle_.size()); }
  PrefixCacheStats TakeStats();

  // Starts recording changes for TakeChanges (off by default: an engine nobody reports for would
  // pile them up) and returns every key findable now, the set the changes then apply to.
  std::vector<BlockKey> TrackChanges();
  // The changes since TrackChanges or the previous call, in order.
  std::vector<PrefixCacheChange> TakeChanges();

 private:
  struct Entry {
    BlockKey key;
    int32_t refs = 0;
    std::list<int32_t>::iterator idle_at;  // valid while refs == 0
  };

  const int32_t block_size_;
  absl::flat_hash_map<BlockKey, int32_t> by_key_;  // key → block
  absl::flat_hash_map<int32_t, Entry> blocks_;     // block → its key and holders
  std::list<int32_t> idle_;                        // idle blocks, least recently used first
  PrefixCacheStats stats_;
  bool tracking_ = false;
  std::vector<PrefixCacheChange> changes_;  // since the last TakeChanges, while tracking_
};

}  // namespace indexcache
