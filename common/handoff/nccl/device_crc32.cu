// DeviceCrc32's kernel: thread i sums piece i (kDeviceCrc32PieceBytes bytes, the last one shorter)
// with slicing-by-8 tables in shared memory, reading 16 bytes at a time once the piece is 16-aligned
// (every piece has the buffer's alignment, since the piece size is a multiple of 16).
#include "common/handoff/nccl/device_crc32.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/handoff/crc32_combine.h"

namespace indexcache {
namespace {

// Small blocks spread few pieces over many SMs (64 MiB is 8192 pieces: 128 blocks of 64, about one
// per SM of an H100); each block's table copy is 8 KiB of L2 reads, negligible beside its 512 KiB.
constexpr int kThreadsPerBlock = 64;
// 16-byte loads issued together (a batch) before they are summed: their latencies overlap instead
// of adding.
constexpr int kLoadsInFlight = 4;
static_assert(kDeviceCrc32PieceBytes % (16 * kLoadsInFlight) == 0);

// table[0] is zlib's byte table (reflected 0xEDB88320); table[k][b] is the CRC contribution of byte b
// followed by k zero bytes, so 8 bytes fold in one step of 8 independent lookups.
struct SlicingTables {
  uint32_t table[8][256];
};

constexpr SlicingTables MakeSlicingTables() {
  SlicingTables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    t.table[0][b] = crc;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      const uint32_t prev = t.table[k - 1][b];
      t.table[k][b] = (prev >> 8) ^ t.table[0][prev & 0xff];
    }
  }
  return t;
}

// Built at compile time; each block copies it into shared memory, where lookups from divergent
// indices cost a bank conflict at most (constant memory would serialize them).
__device__ const SlicingTables kSlicingTables = MakeSlicingTables();

__device__ __forceinline__ uint32_t FoldByte(const uint32_t (*table)[256], uint32_t crc, uint8_t byte) {
  return table[0][(crc ^ byte) & 0xff] ^ (crc >> 8);
}

// Folds 8 bytes, `lo` the first four (little-endian, as they lie in memory), `hi` the next four.
__device__ __forceinline__ uint32_t Fold8(const uint32_t (*table)[256], uint32_t crc, uint32_t lo, uint32_t hi) {
  crc ^= lo;
  return table[7][crc & 0xff] ^ table[6][(crc >> 8) & 0xff] ^ table[5][(crc >> 16) & 0xff] ^ table[4][crc >> 24] ^
         table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
}

__device__ __forceinline__ uint32_t Fold16(const uint32_t (*table)[256], uint32_t crc, uint4 v) {
  return Fold8(table, Fold8(table, crc, v.x, v.y), v.z, v.w);
}

// crcs[i] = crc32(0, data + i·kDeviceCrc32PieceBytes, that piece's length), i < pieces.
__global__ void PieceCrcKernel(const uint8_t* __restrict__ data, size_t bytes, size_t pieces,
                               uint32_t* __restrict__ crcs) {
  __shared__ uint32_t table[8][256];
  for (int i = threadIdx.x; i < 8 * 256; i += blockDim.x) {
    table[i / 256][i % 256] = kSlicingTables.table[i / 256][i % 256];
  }
  __syncthreads();
  const size_t piece = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (piece >= pieces) return;
  const size_t begin = piece * kDeviceCrc32PieceBytes;
  const uint8_t* p = data + begin;
  size_t n = min(kDeviceCrc32PieceBytes, bytes - begin);
  uint32_t crc = 0xffffffffu;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 15) != 0; --n) crc = FoldByte(table, crc, *p++);
  const uint4* q = reinterpret_cast<const uint4*>(p);
  constexpr size_t kBatchBytes = 16 * kLoadsInFlight;
  if (n >= kBatchBytes) {
    // The next batch is loaded before the current one is folded, so a thread always has a batch in
    // flight while it works through the shared-memory lookups of the previous one.
    uint4 current[kLoadsInFlight];
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) current[i] = __ldg(q + i);
    for (; n >= 2 * kBatchBytes; n -= kBatchBytes) {
      q += kLoadsInFlight;
      uint4 next[kLoadsInFlight];
#pragma unroll
      for (int i = 0; i < kLoadsInFlight; ++i) next[i] = __ldg(q + i);
#pragma unroll
      for (int i = 0; i < kLoadsInFlight; ++i) crc = Fold16(table, crc, current[i]);
#pragma unroll
      for (int i = 0; i < kLoadsInFlight; ++i) current[i] = next[i];
    }
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) crc = Fold16(table, crc, current[i]);
    q += kLoadsInFlight;
    n -= kBatchBytes;
  }
  for (; n >= 16; n -= 16) crc = Fold16(table, crc, __ldg(q++));
  p = reinterpret_cast<const uint8_t*>(q);
  for (; n > 0; --n) crc = FoldByte(table, crc, *p++);
  crcs[piece] = ~crc;
}

}  // namespace

DeviceCrc32::~DeviceCrc32() {
  // Both free by address (unified addressing), whatever device is current now.
  if (device_crcs_ != nullptr) cudaFree(device_crcs_);
  if (host_crcs_ != nullptr) cudaFreeHost(host_crcs_);
}

absl::Status DeviceCrc32::Reserve(size_t pieces) {
  if (pieces <= capacity_) return absl::OkStatus();
  if (device_crcs_ != nullptr) cudaFree(device_crcs_);
  if (host_crcs_ != nullptr) cudaFreeHost(host_crcs_);
  device_crcs_ = nullptr;
  host_crcs_ = nullptr;
  capacity_ = 0;
  cudaError_t error = cudaMalloc(&device_crcs_, pieces * sizeof(uint32_t));
  if (error == cudaSuccess) error = cudaMallocHost(&host_crcs_, pieces * sizeof(uint32_t));
  if (error != cudaSuccess) {
    return absl::InternalError(absl::StrCat("allocating ", pieces, " piece CRCs: ", cudaGetErrorName(error), " (",
                                            cudaGetErrorString(error), ")"));
  }
  capacity_ = pieces;
  return absl::OkStatus();
}

absl::Status DeviceCrc32::Enqueue(const void* device_data, size_t bytes, cudaStream_t stream) {
  bytes_ = 0;
  if (bytes == 0) return absl::OkStatus();
  const auto failed = [bytes](absl::string_view cause) {
    return absl::InternalError(
        absl::StrCat("computing the CRC-32 of ", bytes, " bytes of handoff rows on the GPU: ", cause));
  };
  if (device_data == nullptr) return failed("no device memory");
  const size_t pieces = (bytes + kDeviceCrc32PieceBytes - 1) / kDeviceCrc32PieceBytes;
  if (absl::Status status = Reserve(pieces); !status.ok()) return failed(status.message());
  const unsigned blocks = static_cast<unsigned>((pieces + kThreadsPerBlock - 1) / kThreadsPerBlock);
  PieceCrcKernel<<<blocks, kThreadsPerBlock, 0, stream>>>(static_cast<const uint8_t*>(device_data), bytes, pieces,
                                                          device_crcs_);
  cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) {
    error = cudaMemcpyAsync(host_crcs_, device_crcs_, pieces * sizeof(uint32_t), cudaMemcpyDeviceToHost, stream);
  }
  if (error != cudaSuccess) {
    return failed(absl::StrCat(cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
  }
  bytes_ = bytes;
  return absl::OkStatus();
}

uint32_t DeviceCrc32::Result() const {
  if (bytes_ == 0) return 0;
  const size_t pieces = (bytes_ + kDeviceCrc32PieceBytes - 1) / kDeviceCrc32PieceBytes;
  return CombinePieceCrcs(absl::MakeConstSpan(host_crcs_, pieces), kDeviceCrc32PieceBytes, bytes_);
}

}  // namespace indexcache
