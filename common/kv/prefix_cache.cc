#include "common/kv/prefix_cache.h"

#include <openssl/evp.h>

#include <string>
#include <utility>

namespace indexcache {
namespace {

BlockKey Sha256(const std::string& bytes) {
  BlockKey key{};
  unsigned int size = 0;
  // SHA-256 over a memory buffer cannot fail short of memory exhaustion inside libcrypto.
  EVP_Digest(bytes.data(), bytes.size(), key.data(), &size, EVP_sha256(), nullptr);
  return key;
}

}  // namespace

PrefixCacheStats& PrefixCacheStats::operator+=(const PrefixCacheStats& other) {
  queried_tokens += other.queried_tokens;
  hit_tokens += other.hit_tokens;
  queried_blocks += other.queried_blocks;
  hit_blocks += other.hit_blocks;
  evictions += other.evictions;
  return *this;
}

BlockKey PrefixCache::Seed(std::string_view model_fingerprint, std::string_view layer_pattern) {
  // A version tag, and a NUL between the fields so no two (fingerprint, pattern) pairs read alike.
  std::string bytes = "indexcache prefix cache v1";
  bytes.push_back('\0');
  bytes.append(model_fingerprint);
  bytes.push_back('\0');
  bytes.append(layer_pattern);
  return Sha256(bytes);
}

BlockKey PrefixCache::Chain(const BlockKey& previous, absl::Span<const int32_t> tokens) {
  std::string bytes(previous.begin(), previous.end());
  bytes.reserve(previous.size() + 4 * tokens.size());
  for (int32_t token : tokens) {
    // Little-endian whatever the host, so keys mean the same on every machine.
    const uint32_t v = static_cast<uint32_t>(token);
    for (int shift = 0; shift < 32; shift += 8) bytes.push_back(static_cast<char>((v >> shift) & 0xff));
  }
  return Sha256(bytes);
}

void PrefixCache::ExtendChain(const BlockKey& seed, int32_t block_size, absl::Span<const int32_t> tokens,
                              size_t count, std::vector<BlockKey>& keys) {
  keys.reserve(count);
  while (keys.size() < count) {
    const size_t i = keys.size();
    keys.push_back(Chain(i == 0 ? seed : keys.back(), tokens.subspan(i * block_size, block_size)));
  }
}

int32_t PrefixCache::LookupBlocks(size_t prompt_tokens, int32_t block_size) {
  if (prompt_tokens == 0 || block_size <= 0) return 0;
  return static_cast<int32_t>((prompt_tokens - 1) / static_cast<size_t>(block_size));
}

uint64_t PrefixCache::ShortKey(const BlockKey& key) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | key[i];
  return v;
}

std::vector<uint64_t> PrefixCache::LookupShortKeys(const BlockKey& seed, int32_t block_size,
                                                   absl::Span<const int32_t> prompt) {
  std::vector<BlockKey> keys;
  ExtendChain(seed, block_size, prompt, LookupBlocks(prompt.size(), block_size), keys);
  std::vector<uint64_t> short_keys;
  short_keys.reserve(keys.size());
  for (const BlockKey& key : keys) short_keys.push_back(ShortKey(key));
  return short_keys;
}

std::vector<int32_t> PrefixCache::Acquire(absl::Span<const BlockKey> keys, int32_t num_tokens) {
  std::vector<int32_t> found;
  for (const BlockKey& key : keys) {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) break;
    Entry& entry = blocks_.at(it->second);
    if (entry.refs++ == 0) idle_.erase(entry.idle_at);
    found.push_back(it->second);
  }
  stats_.queried_tokens += num_tokens;
  stats_.queried_blocks += keys.size();
  stats_.hit_blocks += found.size();
  stats_.hit_tokens += found.size() * static_cast<uint64_t>(block_size_);
  return found;
}

bool PrefixCache::Register(const BlockKey& key, int32_t block) {
  if (by_key_.contains(key) || blocks_.contains(block)) return false;
  by_key_.emplace(key, block);
  blocks_.emplace(block, Entry{key, /*refs=*/1, {}});
  if (tracking_) changes_.push_back({key, /*stored=*/true});
  return true;
}

bool PrefixCache::Drop(int32_t block) {
  auto it = blocks_.find(block);
  if (it == blocks_.end()) return false;
  Entry& entry = it->second;
  if (--entry.refs == 0) entry.idle_at = idle_.insert(idle_.end(), block);
  return true;
}

std::vector<int32_t> PrefixCache::Evict(int32_t count) {
  std::vector<int32_t> evicted;
  while (static_cast<int32_t>(evicted.size()) < count && !idle_.empty()) {
    const int32_t block = idle_.front();
    idle_.pop_front();
    const BlockKey key = blocks_.at(block).key;
    by_key_.erase(key);
    blocks_.erase(block);
    if (tracking_) changes_.push_back({key, /*stored=*/false});
    evicted.push_back(block);
  }
  stats_.evictions += evicted.size();
  return evicted;
}

PrefixCacheStats PrefixCache::TakeStats() {
  PrefixCacheStats taken = stats_;
  stats_ = PrefixCacheStats();
  return taken;
}

std::vector<BlockKey> PrefixCache::TrackChanges() {
  tracking_ = true;
  changes_.clear();
  std::vector<BlockKey> keys;
  keys.reserve(by_key_.size());
  for (const auto& [key, block] : by_key_) keys.push_back(key);
  return keys;
}

std::vector<PrefixCacheChange> PrefixCache::TakeChanges() { return std::exchange(changes_, {}); }

}  // namespace indexcache
