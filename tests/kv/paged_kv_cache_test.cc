// PagedKvCache: budget → block count, growth and release of block tables (all-or-nothing), no index
// pool for Shared layers, and slot arithmetic — rows written through the CPU backend at
// block_table[p / block_size] · block_size + p % block_size read back by (sequence, position). With
// the prefix cache: shared blocks in several tables, released only by their last holder, idle ones
// evicted by a Reserve that needs them and by nothing else.
#include "common/kv/paged_kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

// 3 layers, the middle one Shared: latent 10 floats per layer, index keys 4 floats on layers 0 and 2.
KvCacheSpec SmallSpec(int32_t block_size = 8) {
  KvCacheSpec spec;
  spec.num_layers = 3;
  spec.layer_has_index_keys = {true, false, true};
  spec.latent_dim = 10;
  spec.index_key_dim = 4;
  spec.block_size = block_size;
  return spec;
}

// Per token: 3 · 10 + 2 · 4 = 38 floats = 152 bytes; a block of 8 tokens is 1216 bytes.
constexpr size_t kBytesPerBlock = (3 * 10 + 2 * 4) * sizeof(float) * 8;

class PagedKvCacheTest : public testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }

  std::unique_ptr<PagedKvCache> Make(size_t budget, KvCacheSpec spec = SmallSpec()) {
    auto cache = PagedKvCache::Create(backend_.get(), spec, budget);
    EXPECT_TRUE(cache.ok()) << cache.status();
    return cache.ok() ? std::move(*cache) : nullptr;
  }

  std::unique_ptr<Backend> backend_;
};

// The pools never overlap and together cover the storage: every byte belongs to one pool.
void ExpectPoolsTileTheStorage(const PagedKvCache& cache, int32_t layers, size_t storage_bytes) {
  std::vector<std::pair<const char*, const char*>> ranges;
  for (int32_t l = 0; l < layers; ++l) {
    for (Tensor t : {cache.latent_pool(l), cache.index_key_pool(l)}) {
      if (t.empty()) continue;
      const char* begin = static_cast<const char*>(t.data);
      ranges.emplace_back(begin, begin + t.bytes());
    }
  }
  size_t total = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    total += ranges[i].second - ranges[i].first;
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      EXPECT_TRUE(ranges[i].second <= ranges[j].first || ranges[j].second <= ranges[i].first) << i << " vs " << j;
    }
  }
  EXPECT_EQ(total, storage_bytes);
}

TEST_F(PagedKvCacheTest, BudgetDecidesBlockCount) {
  for (size_t blocks : {1, 5, 17}) {
    for (size_t extra : {size_t{0}, size_t{1}, kBytesPerBlock - 1}) {
      auto cache = Make(blocks * kBytesPerBlock + extra);
      ASSERT_NE(cache, nullptr);
      EXPECT_EQ(cache->bytes_per_block(), kBytesPerBlock);
      EXPECT_EQ(cache->num_blocks(), static_cast<int32_t>(blocks)) << blocks << " + " << extra;
      EXPECT_EQ(cache->num_free_blocks(), static_cast<int32_t>(blocks));
      EXPECT_EQ(cache->num_used_blocks(), 0);
    }
  }
}

TEST_F(PagedKvCacheTest, BudgetBelowOneBlockIsAnError) {
  auto cache = PagedKvCache::Create(backend_.get(), SmallSpec(), kBytesPerBlock - 1);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(cache.status().message(), HasSubstr(std::to_string(kBytesPerBlock)));
  EXPECT_THAT(cache.status().message(), HasSubstr(std::to_string(kBytesPerBlock - 1)));
  EXPECT_FALSE(PagedKvCache::Create(backend_.get(), SmallSpec(), 0).ok());
}

TEST_F(PagedKvCacheTest, InconsistentSpecIsRefused) {
  KvCacheSpec spec = SmallSpec();
  spec.layer_has_index_keys = {true, false};
  EXPECT_EQ(PagedKvCache::Create(backend_.get(), spec, 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
  spec = SmallSpec(0);
  EXPECT_EQ(PagedKvCache::Create(backend_.get(), spec, 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
  spec = SmallSpec();
  spec.dtype = DType::kI32;
  EXPECT_EQ(PagedKvCache::Create(backend_.get(), spec, 1 << 20).status().code(), absl::StatusCode::kInvalidArgument);
  spec = SmallSpec();
  spec.num_layers = 0;
  spec.layer_has_index_keys.clear();
  EXPECT_FALSE(PagedKvCache::Create(backend_.get(), spec, 1 << 20).ok());
}

TEST_F(PagedKvCacheTest, PoolsHaveTheirShapesAndSharedLayersHaveNoIndexPool) {
  auto cache = Make(5 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  const int64_t slots = 5 * 8;
  for (int32_t l = 0; l < 3; ++l) {
    const Tensor latent = cache->latent_pool(l);
    EXPECT_EQ(latent.rows, slots);
    EXPECT_EQ(latent.cols, 10);
    EXPECT_EQ(latent.dtype, DType::kF32);
  }
  EXPECT_EQ(cache->index_key_pool(0).rows, slots);
  EXPECT_EQ(cache->index_key_pool(0).cols, 4);
  EXPECT_TRUE(cache->index_key_pool(1).empty()) << "a Shared layer stores no index keys";
  EXPECT_EQ(cache->index_key_pool(2).rows, slots);
  // One Shared layer saves index_key_dim floats per token.
  EXPECT_EQ(cache->index_key_bytes_saved_per_token(), 4 * sizeof(float));

  ExpectPoolsTileTheStorage(*cache, 3, 5 * kBytesPerBlock);
}

// A BF16 cache (the CUDA backend's) stores 2-byte rows: twice the blocks in the same budget.
TEST_F(PagedKvCacheTest, Bf16RowsHalveTheBlock) {
  KvCacheSpec spec = SmallSpec();
  spec.dtype = DType::kBF16;
  auto cache = Make(5 * kBytesPerBlock, spec);
  ASSERT_NE(cache, nullptr);
  EXPECT_EQ(cache->bytes_per_block(), kBytesPerBlock / 2);
  EXPECT_EQ(cache->num_blocks(), 10);
  for (int32_t l = 0; l < 3; ++l) EXPECT_EQ(cache->latent_pool(l).dtype, DType::kBF16);
  EXPECT_EQ(cache->index_key_pool(2).dtype, DType::kBF16);
  EXPECT_EQ(cache->index_key_bytes_saved_per_token(), 4 * 2u);
  ExpectPoolsTileTheStorage(*cache, 3, 5 * kBytesPerBlock);
}

TEST_F(PagedKvCacheTest, AllFullSavesNothing) {
  KvCacheSpec spec = SmallSpec();
  spec.layer_has_index_keys = {true, true, true};
  auto cache = Make(size_t{1} << 20, spec);
  ASSERT_NE(cache, nullptr);
  EXPECT_EQ(cache->index_key_bytes_saved_per_token(), 0u);
  EXPECT_EQ(cache->bytes_per_block(), (3 * 10 + 3 * 4) * sizeof(float) * 8);
}

TEST_F(PagedKvCacheTest, ReserveGrowsTheTable) {
  auto cache = Make(6 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  EXPECT_FALSE(cache->Contains(7));
  EXPECT_TRUE(cache->BlockTable(7).empty());
  EXPECT_EQ(cache->BlocksFor(0), 0);
  EXPECT_EQ(cache->BlocksFor(1), 1);
  EXPECT_EQ(cache->BlocksFor(8), 1);
  EXPECT_EQ(cache->BlocksFor(9), 2);

  struct Step {
    int32_t tokens;
    size_t blocks;
  };
  for (const Step& s : {Step{1, 1}, Step{8, 1}, Step{9, 2}, Step{3, 2}, Step{24, 3}, Step{25, 4}}) {
    ASSERT_TRUE(cache->Reserve(7, s.tokens).ok()) << s.tokens;
    EXPECT_TRUE(cache->Contains(7));
    EXPECT_EQ(cache->BlockTable(7).size(), s.blocks) << s.tokens << " tokens";
    EXPECT_EQ(cache->num_used_blocks(), static_cast<int32_t>(s.blocks));
  }
  // Growing keeps the blocks already there, in order.
  const std::vector<int32_t> before = cache->BlockTable(7);
  ASSERT_TRUE(cache->Reserve(7, 40).ok());
  const std::vector<int32_t>& after = cache->BlockTable(7);
  ASSERT_EQ(after.size(), 5u);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), after.begin()));
  EXPECT_EQ(std::set<int32_t>(after.begin(), after.end()).size(), 5u);
}

TEST_F(PagedKvCacheTest, FailedReserveChangesNothing) {
  auto cache = Make(5 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  ASSERT_TRUE(cache->Reserve(1, 24).ok());  // 3 blocks
  const std::vector<int32_t> table = cache->BlockTable(1);

  // A new sequence that does not fit is not created.
  absl::Status status = cache->Reserve(2, 24);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("3 blocks needed"));
  EXPECT_THAT(status.message(), HasSubstr("2 of 5 free"));
  EXPECT_FALSE(cache->Contains(2));
  EXPECT_EQ(cache->num_free_blocks(), 2);

  // An existing sequence that cannot grow keeps its table.
  status = cache->Reserve(1, 48);  // needs 3 more, 2 free
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(cache->Contains(1));
  EXPECT_EQ(cache->BlockTable(1), table);
  EXPECT_EQ(cache->num_free_blocks(), 2);

  // What fits still fits.
  EXPECT_TRUE(cache->Reserve(1, 40).ok());
  EXPECT_EQ(cache->num_free_blocks(), 0);
}

TEST_F(PagedKvCacheTest, ReleaseFreesAndIsIdempotent) {
  auto cache = Make(4 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  ASSERT_TRUE(cache->Reserve(1, 16).ok());
  ASSERT_TRUE(cache->Reserve(2, 16).ok());
  EXPECT_EQ(cache->num_free_blocks(), 0);
  const std::vector<int32_t> freed = cache->BlockTable(1);
  cache->Release(1);
  EXPECT_FALSE(cache->Contains(1));
  EXPECT_TRUE(cache->BlockTable(1).empty());
  EXPECT_EQ(cache->num_free_blocks(), 2);
  cache->Release(1);   // again
  cache->Release(99);  // never seen
  EXPECT_EQ(cache->num_free_blocks(), 2);
  EXPECT_EQ(cache->BlockTable(2).size(), 2u);
  // The freed blocks go to the next sequence.
  ASSERT_TRUE(cache->Reserve(3, 16).ok());
  const std::vector<int32_t>& reused = cache->BlockTable(3);
  EXPECT_EQ(std::set<int32_t>(reused.begin(), reused.end()), std::set<int32_t>(freed.begin(), freed.end()));
  cache->Release(2);
  cache->Release(3);
  EXPECT_EQ(cache->num_used_blocks(), 0);
}

// Writes one row per (sequence, position) into every pool through the backend, at the slot the
// block table gives, then reads each pool back and finds every row by (sequence, position).
TEST_F(PagedKvCacheTest, RowsLandAtTheirSlots) {
  constexpr int32_t kBlock = 4;
  const KvCacheSpec spec = SmallSpec(kBlock);
  const size_t per_block = (3 * 10 + 2 * 4) * sizeof(float) * kBlock;
  auto cache = Make(8 * per_block, spec);
  ASSERT_NE(cache, nullptr);
  // Interleaved growth so that tables are not contiguous ranges of ids.
  const std::map<SequenceId, int32_t> lengths = {{10, 11}, {20, 6}, {30, 9}};
  for (int32_t upto : {3, 6, 9, 12}) {
    for (const auto& [seq, len] : lengths) ASSERT_TRUE(cache->Reserve(seq, std::min(upto, len)).ok());
  }
  EXPECT_EQ(cache->num_used_blocks(), 3 + 2 + 3);

  // Every token's row: value = seq · 1e4 + pos · 100 + layer · 10 + col (+ 0.5 for index keys).
  auto value = [](SequenceId seq, int32_t pos, int32_t layer, int32_t col, bool index) {
    return static_cast<float>(seq * 10000 + pos * 100 + layer * 10 + col) + (index ? 0.5f : 0.0f);
  };
  std::vector<std::pair<SequenceId, int32_t>> tokens;
  std::vector<int32_t> slots;
  for (const auto& [seq, len] : lengths) {
    const std::vector<int32_t>& table = cache->BlockTable(seq);
    for (int32_t pos = 0; pos < len; ++pos) {
      tokens.emplace_back(seq, pos);
      slots.push_back(table[pos / kBlock] * kBlock + pos % kBlock);
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  EXPECT_EQ(std::set<int32_t>(slots.begin(), slots.end()).size(), tokens.size()) << "two tokens share a slot";

  auto slot_buffer = backend_->Allocate(n * sizeof(int32_t));
  ASSERT_TRUE(slot_buffer.ok());
  const Tensor slot_tensor = slot_buffer->View(DType::kI32, n, 1);
  backend_->Upload(slots.data(), slot_tensor);
  for (int32_t layer = 0; layer < 3; ++layer) {
    for (bool index : {false, true}) {
      const Tensor pool = index ? cache->index_key_pool(layer) : cache->latent_pool(layer);
      if (pool.empty()) continue;
      std::vector<float> rows(n * pool.cols);
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < pool.cols; ++c) {
          rows[r * pool.cols + c] = value(tokens[r].first, tokens[r].second, layer, static_cast<int32_t>(c), index);
        }
      }
      auto src = backend_->Allocate(rows.size() * sizeof(float));
      ASSERT_TRUE(src.ok());
      const Tensor src_tensor = src->View(DType::kF32, n, pool.cols);
      backend_->Upload(rows.data(), src_tensor);
      backend_->WriteCacheRows(src_tensor, slot_tensor, pool);
      ASSERT_TRUE(backend_->Synchronize().ok());
    }
  }

  for (int32_t layer = 0; layer < 3; ++layer) {
    for (bool index : {false, true}) {
      const Tensor pool = index ? cache->index_key_pool(layer) : cache->latent_pool(layer);
      if (pool.empty()) continue;
      std::vector<float> host(pool.numel());
      ASSERT_TRUE(backend_->Download(pool, host.data()).ok());
      for (const auto& [seq, len] : lengths) {
        const std::vector<int32_t>& table = cache->BlockTable(seq);
        for (int32_t pos = 0; pos < len; ++pos) {
          const int64_t slot = int64_t{table[pos / kBlock]} * kBlock + pos % kBlock;
          for (int64_t c = 0; c < pool.cols; ++c) {
            ASSERT_EQ(host[slot * pool.cols + c], value(seq, pos, layer, static_cast<int32_t>(c), index))
                << "seq " << seq << " pos " << pos << " layer " << layer << (index ? " index" : " latent") << " col "
                << c;
          }
        }
      }
    }
  }
}

// Keys of the first `blocks` full blocks of a sequence of tokens 0, 1, 2, … (blocks of 8).
std::vector<BlockKey> CountingKeys(int32_t blocks) {
  std::vector<BlockKey> keys;
  BlockKey previous = PrefixCache::Seed("fp", "FSF");
  for (int32_t i = 0; i < blocks; ++i) {
    std::vector<int32_t> tokens(8);
    for (int32_t t = 0; t < 8; ++t) tokens[t] = 8 * i + t;
    previous = PrefixCache::Chain(previous, tokens);
    keys.push_back(previous);
  }
  return keys;
}

TEST_F(PagedKvCacheTest, SharedBlocksOutliveTheirWriterAndAreEvictedOnlyWhenNeeded) {
  auto cache = Make(6 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  const std::vector<BlockKey> keys = CountingKeys(3);
  ASSERT_TRUE(cache->Reserve(1, 20).ok());  // 3 blocks: two full, one partial
  cache->PublishBlocks(1, 0, absl::MakeConstSpan(keys).first(2));
  EXPECT_EQ(cache->num_cached_blocks(), 2);
  const std::vector<int32_t> writer = cache->BlockTable(1);

  // Sequence 2 starts with both cached blocks (the third key was never published: a partial block).
  EXPECT_EQ(cache->AttachCachedPrefix(2, keys, 24), 2);
  ASSERT_TRUE(cache->Reserve(2, 24).ok());
  const std::vector<int32_t>& reader = cache->BlockTable(2);
  ASSERT_EQ(reader.size(), 3u);
  EXPECT_EQ(reader[0], writer[0]);
  EXPECT_EQ(reader[1], writer[1]);
  EXPECT_NE(reader[2], writer[2]) << "past the shared prefix a sequence writes its own block";
  EXPECT_EQ(cache->num_used_blocks(), 4);

  cache->Release(1);  // its partial block is freed; the shared ones stay with sequence 2
  EXPECT_EQ(cache->num_used_blocks(), 3);
  EXPECT_EQ(cache->num_idle_cached_blocks(), 0);
  // A Reserve that fits in the free blocks evicts nothing, and one that cannot fit even by evicting
  // everything idle fails without evicting.
  ASSERT_TRUE(cache->Reserve(3, 24).ok());
  EXPECT_EQ(cache->num_free_blocks(), 0);
  EXPECT_EQ(cache->Reserve(4, 8).code(), absl::StatusCode::kResourceExhausted) << "held blocks are not evicted";

  cache->Release(2);  // the shared blocks turn idle: free for allocation, still findable
  EXPECT_EQ(cache->num_idle_cached_blocks(), 2);
  EXPECT_EQ(cache->num_free_blocks(), 3);
  const absl::Status short_status = cache->Reserve(4, 32);
  EXPECT_EQ(short_status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(short_status.message(), HasSubstr("1 of 6 free"));
  EXPECT_THAT(short_status.message(), HasSubstr("2 more blocks idle in the prefix cache"));
  EXPECT_EQ(cache->num_cached_blocks(), 2) << "a failed Reserve evicts nothing";
  ASSERT_TRUE(cache->Reserve(4, 8).ok());  // takes the free block: the cache is kept
  EXPECT_EQ(cache->num_cached_blocks(), 2);
  ASSERT_TRUE(cache->Reserve(4, 16).ok());  // needs one more: the later block of the chain goes first
  EXPECT_EQ(cache->num_cached_blocks(), 1);
  EXPECT_EQ(cache->TakePrefixCacheStats().evictions, 1u);
  EXPECT_EQ(cache->AttachCachedPrefix(5, keys, 24), 1) << "block 0 is still cached";
  EXPECT_EQ(cache->BlockTable(5), std::vector<int32_t>{writer[0]});

  for (SequenceId seq : {3, 4, 5}) cache->Release(seq);
  EXPECT_EQ(cache->num_used_blocks(), 0);
  EXPECT_EQ(cache->num_free_blocks(), 6);
  ASSERT_TRUE(cache->Reserve(6, 48).ok()) << "every block, the idle cached one evicted";
  EXPECT_EQ(cache->num_cached_blocks(), 0);
}

TEST_F(PagedKvCacheTest, AttachingNeedsAnEmptySequence) {
  auto cache = Make(4 * kBytesPerBlock);
  ASSERT_NE(cache, nullptr);
  const std::vector<BlockKey> keys = CountingKeys(1);
  ASSERT_TRUE(cache->Reserve(1, 8).ok());
  cache->PublishBlocks(1, 0, keys);
  EXPECT_EQ(cache->AttachCachedPrefix(1, keys, 8), 0) << "a sequence holding blocks gets no prefix";
  EXPECT_EQ(cache->AttachCachedPrefix(2, CountingKeys(0), 3), 0);
  EXPECT_FALSE(cache->Contains(2)) << "a miss leaves no empty table behind";
  EXPECT_EQ(cache->num_used_blocks(), 1);
}

}  // namespace
}  // namespace indexcache
