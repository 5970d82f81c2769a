// DeviceCrc32 against zlib's crc32 on the host copy of the same random bytes, on the GPU machine:
//   device_crc32_check
// Sizes around the piece boundary and large ones, at aligned and odd addresses. Prints PASS/FAIL per
// case and the throughput at 4 and 64 MiB (kernel + copy back, then the host join); exits 1 on any FAIL.
#include <cuda_runtime.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "common/handoff/nccl/device_crc32.h"

namespace indexcache {
namespace {

bool CudaOk(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  std::printf("FAIL %s: %s (%s)\n", what, cudaGetErrorName(error), cudaGetErrorString(error));
  return false;
}

uint32_t ZlibCrc(const unsigned char* data, size_t n) {
  uLong crc = crc32(0, nullptr, 0);
  for (size_t done = 0; done < n;) {  // crc32 takes a uInt length
    const size_t step = std::min<size_t>(n - done, 1u << 30);
    crc = crc32(crc, data + done, static_cast<uInt>(step));
    done += step;
  }
  return static_cast<uint32_t>(crc);
}

int Run() {
  constexpr size_t kMiB = size_t{1} << 20;
  constexpr size_t kPiece = kDeviceCrc32PieceBytes;
  const size_t sizes[] = {0, 1, 15, 4095, 4096, 4097, kPiece - 1, kPiece, kPiece + 1, 3 * kPiece + 17,
                          kMiB + 3, 64 * kMiB};
  const size_t offsets[] = {0, 1, 3, 8};
  constexpr size_t kMaxOffset = 8;
  const size_t max_bytes = 64 * kMiB + kMaxOffset;

  std::vector<unsigned char> host(max_bytes);
  std::mt19937_64 rng(20261207);
  for (size_t i = 0; i < max_bytes; i += 8) {
    const uint64_t word = rng();
    for (size_t j = 0; j < 8 && i + j < max_bytes; ++j) host[i + j] = static_cast<unsigned char>(word >> (8 * j));
  }
  unsigned char* device = nullptr;
  cudaStream_t stream = nullptr;
  if (!CudaOk(cudaMalloc(&device, max_bytes), "cudaMalloc") || !CudaOk(cudaStreamCreate(&stream), "cudaStreamCreate") ||
      !CudaOk(cudaMemcpy(device, host.data(), max_bytes, cudaMemcpyHostToDevice), "cudaMemcpy")) {
    return 1;
  }

  int failures = 0;
  DeviceCrc32 crc;
  for (size_t bytes : sizes) {
    for (size_t offset : offsets) {
      const absl::Status status = crc.Enqueue(device + offset, bytes, stream);
      if (!status.ok()) {
        std::printf("FAIL %zu bytes at +%zu: %s\n", bytes, offset, status.ToString().c_str());
        ++failures;
        continue;
      }
      if (!CudaOk(cudaStreamSynchronize(stream), "cudaStreamSynchronize")) return 1;
      const uint32_t got = crc.Result();
      const uint32_t want = ZlibCrc(host.data() + offset, bytes);
      std::printf("%s %zu bytes at +%zu: 0x%08x, zlib 0x%08x\n", got == want ? "PASS" : "FAIL", bytes, offset, got,
                  want);
      if (got != want) ++failures;
    }
  }

  // Throughput at 4 MiB (the handoff's largest rows chunk) and 64 MiB, aligned: the GPU half (kernel +
  // piece CRCs back) timed by events over back-to-back runs, the host join by the clock.
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  if (!CudaOk(cudaEventCreate(&start), "cudaEventCreate") || !CudaOk(cudaEventCreate(&stop), "cudaEventCreate")) {
    return 1;
  }
  for (size_t bytes : {4 * kMiB, 64 * kMiB}) {
    constexpr int kRuns = 20;
    for (int warmup = 0; warmup < 3; ++warmup) (void)crc.Enqueue(device, bytes, stream);
    cudaEventRecord(start, stream);
    for (int run = 0; run < kRuns; ++run) {
      if (!crc.Enqueue(device, bytes, stream).ok()) ++failures;
    }
    cudaEventRecord(stop, stream);
    if (!CudaOk(cudaEventSynchronize(stop), "cudaEventSynchronize")) return 1;
    float gpu_ms = 0;
    cudaEventElapsedTime(&gpu_ms, start, stop);
    gpu_ms /= kRuns;
    uint32_t got = 0;
    const auto host_begin = std::chrono::steady_clock::now();
    for (int run = 0; run < kRuns; ++run) got = crc.Result();
    const double host_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_begin).count() / kRuns;
    const auto zlib_begin = std::chrono::steady_clock::now();
    const uint32_t want = ZlibCrc(host.data(), bytes);
    const double zlib_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - zlib_begin).count();
    const double gb = static_cast<double>(bytes) / 1e9;
    std::printf("%zu MiB: GPU %.3f ms (%.1f GB/s), host join of %zu pieces %.3f ms, together %.1f GB/s "
                "(zlib on the host %.1f GB/s)%s\n",
                bytes / kMiB, gpu_ms, gb / (gpu_ms / 1e3), (bytes + kPiece - 1) / kPiece, host_ms,
                gb / ((gpu_ms + host_ms) / 1e3), gb / (zlib_ms / 1e3),
                got == want ? "" : " [FAIL: the timed runs' CRC differs from zlib's]");
    if (got != want) ++failures;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  cudaFree(device);
  std::printf("%s: %d failure(s)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace indexcache

int main() { return indexcache::Run(); }
