// The NCCL handoff's device-memory path on one GPU, everything but NCCL itself (which needs two):
// a CUDA prefill engine stages a request's rows in device memory (SegmentSink::memory kDevice); each
// slice equals, byte for byte, the same positions exported to host staging, and its CRC-32 computed
// on the GPU (DeviceCrc32) equals zlib's over those host bytes; a CUDA decode engine imports the
// device rows from a device landing area and decodes exactly what a second one decodes from the
// host-staged rows. Run by tools/gpu/check_cuda.sh; needs a CUDA device, so never registered with
// ctest.
#include <cuda_runtime.h>
#include <zlib.h>

#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/handoff/nccl/device_crc32.h"
#include "common/kv/landing_area.h"
#include "gtest/gtest.h"
#include "tests/engine_steps.h"

namespace indexcache {
namespace {

EngineOptions Options() {
  EngineOptions o;
  o.model_dir = INDEXCACHE_TEST_DATA "/goldens/moe_freq2";
  o.device = "cuda";
  o.kv_cache_bytes = size_t{64} << 20;
  o.block_size = 16;
  o.max_batch_tokens = 32;  // the 150-token prompt in five chunks: five segments
  o.prefix_cache = false;
  return o;
}

std::vector<int32_t> Prompt() {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 150; ++i) ids.push_back(3 + (i * 37) % 200);
  return ids;
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = 12;
  p.ignore_eos = true;
  return p;
}

class DeviceSink final : public SegmentSink {
 public:
  void Take(KvSegment segment) override { segments.push_back(std::move(segment)); }
  bool Ready() const override { return true; }
  RowsMemory memory() const override { return RowsMemory::kDevice; }

  std::vector<KvSegment> segments;
};

std::string ToHost(std::string_view device) {
  std::string host(device.size(), '\0');
  EXPECT_EQ(cudaMemcpy(host.data(), device.data(), device.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

// One imported slice: positions [begin, begin + count) of `layer`'s `kind` rows.
struct Rows {
  int32_t layer;
  KvRowKind kind;
  int32_t begin;
  int32_t count;
  LandedRows rows;
};

// Imports `rows` into a fresh request of `decode`, checks `probes`, starts from `first_token` and
// decodes to the end. Its tokens.
std::vector<int32_t> ImportAndDecode(Engine& decode, std::vector<Rows> rows, const std::vector<IndexerProbe>& probes,
                                     int32_t first_token) {
  std::vector<int32_t> tokens;
  absl::StatusOr<RequestId> id = decode.AdmitImport(Prompt(), Greedy());
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return tokens;
  for (Rows& r : rows) {
    const absl::Status imported = decode.ImportRows(*id, r.layer, r.kind, r.begin, r.count, std::move(r.rows));
    EXPECT_TRUE(imported.ok()) << imported;
  }
  const absl::Status verified = decode.VerifyProbes(*id, probes);
  EXPECT_TRUE(verified.ok()) << verified;
  absl::StatusOr<TokenEvent> started = decode.StartDecode(*id, first_token);
  EXPECT_TRUE(started.ok()) << started.status();
  if (!started.ok()) return tokens;
  tokens.push_back(started->token);
  const std::vector<int32_t> rest = engine_steps::DecodeToEnd(decode, *id);
  tokens.insert(tokens.end(), rest.begin(), rest.end());
  return tokens;
}

TEST(DeviceRowsCheck, DeviceStagedRowsMatchTheHostsAndDecodeTheSame) {
  auto prefill = Engine::Create(Options());
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  ASSERT_EQ((*prefill)->cuda_device(), 0);
  auto sink = std::make_shared<DeviceSink>();
  absl::StatusOr<RequestId> id = (*prefill)->SubmitPrefill(Prompt(), Greedy(), sink);
  ASSERT_TRUE(id.ok()) << id.status();
  const int32_t first_token = engine_steps::RunPrefill(**prefill, *id).first_token;
  ASSERT_GE(first_token, 0);
  ASSERT_EQ(sink->segments.size(), 5u);
  absl::StatusOr<std::vector<IndexerProbe>> probes = (*prefill)->TakeProbes(*id);
  ASSERT_TRUE(probes.ok()) << probes.status();

  auto device_decode = Engine::Create(Options());
  auto host_decode = Engine::Create(Options());
  ASSERT_TRUE(device_decode.ok() && host_decode.ok());
  absl::StatusOr<std::shared_ptr<LandingArea>> area =
      (*device_decode)->CreateReceiveArea(size_t{16} << 20, RowsMemory::kDevice);
  ASSERT_TRUE(area.ok()) << area.status();
  DeviceCrc32 crc;
  std::vector<Rows> device_rows, host_rows;
  for (const KvSegment& segment : sink->segments) {
    ASSERT_TRUE(segment.Wait().ok());
    ASSERT_EQ(segment.memory(), RowsMemory::kDevice);
    absl::StatusOr<KvSegment> host = (*prefill)->ExportSegment(*id, segment.begin(), segment.end());
    ASSERT_TRUE(host.ok()) << host.status();
    ASSERT_TRUE(host->Wait().ok());
    ASSERT_EQ(host->memory(), RowsMemory::kHost);
    for (size_t i = 0; i < segment.slices().size(); ++i) {
      const KvSlice& slice = segment.slices()[i];
      SCOPED_TRACE(::testing::Message() << "layer " << slice.layer << " positions [" << segment.begin() << ", "
                                      << segment.end() << ")");
      const std::string_view on_device = segment.bytes(slice);
      const std::string on_host(host->bytes(host->slices()[i]));
      ASSERT_EQ(ToHost(on_device), on_host) << "device staging differs from host staging";
      ASSERT_TRUE(crc.Enqueue(on_device.data(), on_device.size(), nullptr).ok());
      ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
      EXPECT_EQ(crc.Result(), static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(on_host.data()),
                                                          static_cast<uInt>(on_host.size()))));

      absl::StatusOr<LandedRows> landed = (*area)->Take(on_device.size(), absl::Now() + absl::Seconds(5));
      ASSERT_TRUE(landed.ok()) << landed.status();
      ASSERT_EQ(cudaMemcpy(landed->data, on_device.data(), on_device.size(), cudaMemcpyDeviceToDevice), cudaSuccess);
      device_rows.push_back({slice.layer, slice.kind, segment.begin(), segment.count(), *std::move(landed)});
      auto bytes = std::make_shared<std::string>(on_host);
      host_rows.push_back(
          {slice.layer, slice.kind, segment.begin(), segment.count(), LandedRows{bytes->data(), bytes->size(), bytes}});
    }
  }
  const std::vector<int32_t> from_device = ImportAndDecode(**device_decode, std::move(device_rows), *probes, first_token);
  const std::vector<int32_t> from_host = ImportAndDecode(**host_decode, std::move(host_rows), *probes, first_token);
  EXPECT_EQ(from_device.size(), 12u);
  EXPECT_EQ(from_device, from_host);
  EXPECT_EQ((*area)->in_use(), 0u) << "the imports gave the device ranges back";
}

}  // namespace
}  // namespace indexcache
