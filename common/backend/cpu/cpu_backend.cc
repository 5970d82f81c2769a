#include "common/backend/cpu/cpu_backend.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {

CpuBackend::CpuBackend(int num_threads) {
  if (num_threads > 0) omp_set_num_threads(num_threads);
}

absl::StatusOr<Buffer> CpuBackend::Allocate(size_t bytes) {
  // 64-byte alignment keeps rows friendly to SIMD loads; aligned_alloc wants a multiple of it.
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* data = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat("cpu backend: cannot allocate %d bytes", bytes));
  }
  return Buffer(this, data, bytes);
}

void CpuBackend::Free(void* data) { std::free(data); }

void CpuBackend::Upload(const void* host, Tensor dst) {
  // The CPU backend stores F32 and I32 only; both are 4-byte copies of the host values.
  const size_t row_bytes = static_cast<size_t>(dst.cols) * DTypeSize(dst.dtype);
  const char* src = static_cast<const char*>(host);
  for (int64_t r = 0; r < dst.rows; ++r) {
    std::memcpy(dst.row<char>(0) + r * dst.stride * DTypeSize(dst.dtype), src + r * row_bytes, row_bytes);
  }
}

absl::Status CpuBackend::Download(Tensor src, void* host) {
  if (src.dtype == DType::kBF16) return absl::InvalidArgumentError("cpu backend holds no bf16 tensors");
  const size_t row_bytes = static_cast<size_t>(src.cols) * DTypeSize(src.dtype);
  char* dst = static_cast<char*>(host);
  for (int64_t r = 0; r < src.rows; ++r) {
    std::memcpy(dst + r * row_bytes, src.row<const char>(0) + r * src.stride * DTypeSize(src.dtype),
                row_bytes);
  }
  return absl::OkStatus();
}

namespace {
class DoneCopy final : public AsyncHostCopy {
 public:
  absl::Status Wait() override { return absl::OkStatus(); }
};
}  // namespace

absl::StatusOr<std::unique_ptr<AsyncHostCopy>> CpuBackend::DownloadRowsAsync(Tensor src,
                                                                             absl::Span<const RowRun> runs,
                                                                             char* host) {
  const size_t elem = DTypeSize(src.dtype);
  const size_t row_bytes = static_cast<size_t>(src.cols) * elem;
  for (const RowRun& run : runs) {
    for (int64_t r = 0; r < run.rows; ++r) {
      std::memcpy(host + run.host_offset + r * row_bytes,
                  static_cast<const char*>(src.data) + static_cast<size_t>(run.row + r) * src.stride * elem, row_bytes);
    }
  }
  return std::make_unique<DoneCopy>();
}

void CpuBackend::UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                            std::shared_ptr<const void> /*keep: read before this returns*/) {
  const size_t elem = DTypeSize(dst.dtype);
  const size_t row_bytes = static_cast<size_t>(dst.cols) * elem;
  for (const RowRun& run : runs) {
    for (int64_t r = 0; r < run.rows; ++r) {
      std::memcpy(static_cast<char*>(dst.data) + static_cast<size_t>(run.row + r) * dst.stride * elem,
                  host + run.host_offset + r * row_bytes, row_bytes);
    }
  }
}

void CpuBackend::DownloadInOrder(Tensor src, char* host) {
  // Ops run as they are called: "in order" is now.
  DownloadRowsAsync(src, {RowRun{0, src.rows, 0}}, host).IgnoreError();
}

void CpuBackend::Fill(Tensor dst, float value) {
  for (int64_t r = 0; r < dst.rows; ++r) {
    if (dst.dtype == DType::kI32) {
      std::fill_n(dst.row<int32_t>(r), dst.cols, static_cast<int32_t>(value));
    } else {
      std::fill_n(dst.row<float>(r), dst.cols, value);
    }
  }
}

void CpuBackend::BeginRegion(TimedRegion region) {
  region_start_[static_cast<size_t>(region)] = Clock::now();
}

void CpuBackend::EndRegion(TimedRegion region) {
  const size_t i = static_cast<size_t>(region);
  region_seconds_[i] += std::chrono::duration<double>(Clock::now() - region_start_[i]).count();
}

double CpuBackend::TakeRegionSeconds(TimedRegion region) {
  const size_t i = static_cast<size_t>(region);
  const double seconds = region_seconds_[i];
  region_seconds_[i] = 0.0;
  return seconds;
}

}  // namespace indexcache
