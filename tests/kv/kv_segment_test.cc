// KvSegment export and import on the CPU backend: a segment holds every layer's latent rows and the
// Full layers' index-key rows of its positions, in layer order, read through the block table (the
// blocks are deliberately not contiguous); the values are checked against a formula of (layer, kind,
// position, column) written straight into the pools, not against another export. Import writes
// received rows at the right slots (from host or device memory) and refuses rows of the wrong size, Shared layers' index keys and
// positions past the reservation. Staging areas are reused across exports without mixing rows.
#include "common/kv/kv_segment.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

// 3 layers, the middle one Shared: latent 6 floats per layer, index keys 4 floats on layers 0 and 2.
KvCacheSpec SmallSpec() {
  KvCacheSpec spec;
  spec.num_layers = 3;
  spec.layer_has_index_keys = {true, false, true};
  spec.latent_dim = 6;
  spec.index_key_dim = 4;
  spec.block_size = 4;
  return spec;
}

float Value(int32_t layer, KvRowKind kind, int32_t pos, int32_t col) {
  return 1000.0f * static_cast<float>(layer) + (kind == KvRowKind::kIndexKey ? 500.0f : 0.0f) +
         static_cast<float>(pos) + 0.01f * static_cast<float>(col);
}

class KvSegmentTest : public testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto cache = PagedKvCache::Create(backend_.get(), SmallSpec(), 64 << 10);
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(*cache);
  }

  // The CPU pools are host memory: the slot of (seq, pos) read or written directly.
  float* Row(SequenceId seq, int32_t layer, KvRowKind kind, int32_t pos) {
    const Tensor pool = kind == KvRowKind::kLatent ? cache_->latent_pool(layer) : cache_->index_key_pool(layer);
    const std::vector<int32_t>& table = cache_->BlockTable(seq);
    const int32_t slot = table[pos / cache_->block_size()] * cache_->block_size() + pos % cache_->block_size();
    return pool.row<float>(slot);
  }

  void Fill(SequenceId seq, int32_t tokens) {
    const KvCacheSpec& spec = cache_->spec();
    for (int32_t layer = 0; layer < spec.num_layers; ++layer) {
      for (KvRowKind kind : {KvRowKind::kLatent, KvRowKind::kIndexKey}) {
        if (kind == KvRowKind::kIndexKey && !spec.layer_has_index_keys[layer]) continue;
        for (int32_t pos = 0; pos < tokens; ++pos) {
          float* row = Row(seq, layer, kind, pos);
          for (int32_t c = 0; c < KvRowWidth(spec, kind); ++c) row[c] = Value(layer, kind, pos, c);
        }
      }
    }
  }

  // Reserves `tokens` for seq 1 with seq 2's blocks interleaved, so seq 1's blocks are not adjacent.
  void ReserveInterleaved(int32_t tokens) {
    for (int32_t t = 4; t <= tokens + 3; t += 4) {
      ASSERT_TRUE(cache_->Reserve(1, std::min(t, tokens)).ok());
      ASSERT_TRUE(cache_->Reserve(2, t).ok());
    }
    ASSERT_NE(cache_->BlockTable(1)[1], cache_->BlockTable(1)[0] + 1);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<PagedKvCache> cache_;
};

// Staged in host memory, and in device memory (Backend::Allocate: host memory on the CPU backend, so
// the test reads it) for a transport that sends from the GPU: the same rows either way.
TEST_F(KvSegmentTest, ExportsEveryLayersLatentAndFullLayersIndexKeysInLayerOrder) {
  ReserveInterleaved(13);
  Fill(1, 13);
  KvExporter exporter(*backend_, *cache_);
  for (RowsMemory memory : {RowsMemory::kHost, RowsMemory::kDevice}) {
    SCOPED_TRACE(memory == RowsMemory::kHost ? "host staging" : "device staging");
    absl::StatusOr<KvSegment> segment = exporter.Export(1, 3, 11, memory);
    ASSERT_TRUE(segment.ok()) << segment.status();
    ASSERT_TRUE(segment->Wait().ok());
    EXPECT_EQ(segment->memory(), memory);
    EXPECT_EQ(segment->begin(), 3);
    EXPECT_EQ(segment->end(), 11);
    EXPECT_EQ(segment->dtype(), DType::kF32);

    const std::vector<std::pair<int32_t, KvRowKind>> want_order = {{0, KvRowKind::kLatent},
                                                                    {0, KvRowKind::kIndexKey},
                                                                    {1, KvRowKind::kLatent},
                                                                    {2, KvRowKind::kLatent},
                                                                    {2, KvRowKind::kIndexKey}};
    ASSERT_EQ(segment->slices().size(), want_order.size());
    size_t offset = 0;
    for (size_t i = 0; i < want_order.size(); ++i) {
      const KvSlice& slice = segment->slices()[i];
      EXPECT_EQ(slice.layer, want_order[i].first);
      EXPECT_EQ(slice.kind, want_order[i].second);
      const int32_t width = slice.kind == KvRowKind::kLatent ? 6 : 4;
      EXPECT_EQ(slice.offset, offset);
      ASSERT_EQ(slice.bytes, size_t(8) * width * sizeof(float));
      offset += slice.bytes;
      std::vector<float> rows(slice.bytes / sizeof(float));
      std::memcpy(rows.data(), segment->bytes(slice).data(), slice.bytes);
      for (int32_t t = 0; t < 8; ++t) {
        for (int32_t c = 0; c < width; ++c) {
          EXPECT_EQ(rows[size_t(t) * width + c], Value(slice.layer, slice.kind, 3 + t, c))
              << "layer " << slice.layer << " position " << 3 + t << " column " << c;
        }
      }
    }
    EXPECT_EQ(segment->bytes(), offset);
  }
}

TEST_F(KvSegmentTest, StagingIsReusedWithoutMixingRows) {
  ReserveInterleaved(12);
  Fill(1, 12);
  KvExporter exporter(*backend_, *cache_);
  const void* first_area = nullptr;
  for (int32_t begin : {0, 4, 8}) {
    absl::StatusOr<KvSegment> segment = exporter.Export(1, begin, begin + 4);
    ASSERT_TRUE(segment.ok()) << segment.status();
    ASSERT_TRUE(segment->Wait().ok());
    const KvSlice& last = segment->slices().back();  // layer 2's index keys
    if (first_area == nullptr) first_area = segment->bytes(segment->slices().front()).data();
    EXPECT_EQ(segment->bytes(segment->slices().front()).data(), first_area) << "a new staging area per export";
    float key = 0;
    std::memcpy(&key, segment->bytes(last).data(), sizeof(float));
    EXPECT_EQ(key, Value(2, KvRowKind::kIndexKey, begin, 0));
  }
}

TEST_F(KvSegmentTest, LayersLandOneByOneAndAPassThatStopsFailsTheRest) {
  ReserveInterleaved(8);
  Fill(1, 8);
  KvExporter exporter(*backend_, *cache_);
  absl::StatusOr<KvSegment> segment = exporter.Begin(1, 0, 8);
  ASSERT_TRUE(segment.ok()) << segment.status();
  exporter.ExportLayer(*segment, 0);  // the pass reached layer 0's cache writes, then failed
  exporter.End(*segment, absl::InternalError("the pass failed at layer 1"));
  ASSERT_TRUE(segment->WaitFor(0).ok());  // layer 0's latent rows
  ASSERT_TRUE(segment->WaitFor(1).ok());  // layer 0's index keys
  float latent = 0;
  std::memcpy(&latent, segment->bytes(segment->slices()[0]).data() + 6 * sizeof(float), sizeof(float));
  EXPECT_EQ(latent, Value(0, KvRowKind::kLatent, 1, 0));
  for (size_t i = 2; i < segment->slices().size(); ++i) {
    EXPECT_THAT(segment->WaitFor(i).message(), HasSubstr("the pass failed at layer 1")) << "slice " << i;
  }
}

TEST_F(KvSegmentTest, ASegmentThatCouldNotStartFailsEveryWait) {
  KvExporter exporter(*backend_, *cache_);
  const KvSegment segment = exporter.Failed(0, 8, absl::ResourceExhaustedError("no pinned memory"));
  ASSERT_EQ(segment.slices().size(), 5u);
  for (size_t i = 0; i < segment.slices().size(); ++i) {
    EXPECT_EQ(segment.WaitFor(i).code(), absl::StatusCode::kResourceExhausted) << "slice " << i;
  }
  EXPECT_EQ(segment.Wait().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(KvSegmentTest, ExportPastTheReservationIsOutOfRange) {
  ASSERT_TRUE(cache_->Reserve(1, 5).ok());
  KvExporter exporter(*backend_, *cache_);
  absl::StatusOr<KvSegment> segment = exporter.Export(1, 4, 9);
  EXPECT_EQ(segment.status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(KvSegmentTest, ImportWritesTheRowsAtTheirSlots) {
  ReserveInterleaved(10);
  KvImporter importer(*backend_, *cache_);
  std::vector<float> rows(size_t(5) * 4);
  for (int32_t t = 0; t < 5; ++t) {
    for (int32_t c = 0; c < 4; ++c) rows[size_t(t) * 4 + c] = Value(2, KvRowKind::kIndexKey, 5 + t, c);
  }
  const LandedRows bytes{reinterpret_cast<char*>(rows.data()), rows.size() * sizeof(float), nullptr};
  ASSERT_TRUE(importer.Import(1, 2, KvRowKind::kIndexKey, 5, 5, bytes).ok());
  for (int32_t pos = 5; pos < 10; ++pos) {
    const float* row = Row(1, 2, KvRowKind::kIndexKey, pos);
    for (int32_t c = 0; c < 4; ++c) EXPECT_EQ(row[c], Value(2, KvRowKind::kIndexKey, pos, c)) << pos << "," << c;
  }
}

TEST_F(KvSegmentTest, ImportAcrossAdjacentBlocksWritesOnlyItsPositionsAndReleasesTheRowsAfterTheCopy) {
  // One reservation: adjacent block ids, so positions 3..12 are one run of slots across three blocks.
  ASSERT_TRUE(cache_->Reserve(1, 16).ok());
  ASSERT_EQ(cache_->BlockTable(1)[1], cache_->BlockTable(1)[0] + 1);
  for (int32_t pos = 0; pos < 16; ++pos) std::fill_n(Row(1, 0, KvRowKind::kLatent, pos), 6, -1.0f);
  auto rows = std::make_shared<std::vector<float>>(size_t(10) * 6);
  for (int32_t t = 0; t < 10; ++t) {
    for (int32_t c = 0; c < 6; ++c) (*rows)[size_t(t) * 6 + c] = Value(0, KvRowKind::kLatent, 3 + t, c);
  }
  KvImporter importer(*backend_, *cache_);
  std::weak_ptr<std::vector<float>> watch = rows;
  LandedRows host{reinterpret_cast<char*>(rows->data()), rows->size() * sizeof(float), rows};
  rows.reset();
  ASSERT_TRUE(importer.Import(1, 0, KvRowKind::kLatent, 3, 10, std::move(host)).ok());
  ASSERT_TRUE(backend_->Synchronize().ok());
  EXPECT_TRUE(watch.expired()) << "the import still holds the rows after its copy";
  for (int32_t pos = 0; pos < 16; ++pos) {
    const float* row = Row(1, 0, KvRowKind::kLatent, pos);
    for (int32_t c = 0; c < 6; ++c) {
      const float want = pos >= 3 && pos < 13 ? Value(0, KvRowKind::kLatent, pos, c) : -1.0f;
      EXPECT_EQ(row[c], want) << pos << "," << c;
    }
  }
}

TEST_F(KvSegmentTest, ImportRefusesWrongSizesSharedLayersKeysAndUnreservedPositions) {
  ASSERT_TRUE(cache_->Reserve(1, 8).ok());
  KvImporter importer(*backend_, *cache_);
  std::string zeros(size_t(4) * 4 * sizeof(float), '\0');
  const LandedRows four_rows{zeros.data(), zeros.size(), nullptr};

  absl::Status short_rows = importer.Import(1, 0, KvRowKind::kIndexKey, 0, 5, four_rows);
  EXPECT_EQ(short_rows.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_rows.message(), HasSubstr("take 80 bytes, not 64"));

  absl::Status shared = importer.Import(1, 1, KvRowKind::kIndexKey, 0, 4, four_rows);
  EXPECT_EQ(shared.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shared.message(), HasSubstr("Shared"));

  absl::Status past = importer.Import(1, 0, KvRowKind::kIndexKey, 6, 4, four_rows);
  EXPECT_EQ(past.code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace indexcache
