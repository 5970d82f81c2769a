#include "common/backend/backend.h"

#include <algorithm>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/backend/cpu/cpu_backend.h"
#ifdef INDEXCACHE_HAVE_CUDA
#include "common/backend/cuda/cuda_backend.h"
#endif

namespace indexcache {

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    backend_ = other.backend_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.backend_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::Reset() {
  if (backend_ != nullptr && data_ != nullptr) backend_->Free(data_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    backend_ = std::exchange(other.backend_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void HostBuffer::Reset() {
  if (backend_ != nullptr && data_ != nullptr) backend_->FreeHost(data_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

// Plain host memory where the backend's memory is host memory too (the CPU backend).
absl::StatusOr<HostBuffer> Backend::AllocateHost(size_t bytes) {
  void* data = ::operator new(std::max<size_t>(bytes, 1), std::align_val_t{64}, std::nothrow);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  return HostBuffer(this, data, bytes);
}

void Backend::FreeHost(void* data) { ::operator delete(data, std::align_val_t{64}); }

absl::Status Backend::BeginCapture() {
  return absl::UnimplementedError(absl::StrCat("backend '", std::string(name()), "' cannot capture ops"));
}

absl::StatusOr<std::unique_ptr<CapturedOps>> Backend::EndCapture() {
  return absl::UnimplementedError(absl::StrCat("backend '", std::string(name()), "' cannot capture ops"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device, int num_threads) {
  if (device == "cpu") return std::unique_ptr<Backend>(new CpuBackend(num_threads));
  if (device == "cuda") {
#ifdef INDEXCACHE_HAVE_CUDA
    auto backend = CudaBackend::Create();
    if (!backend.ok()) return backend.status();
    return std::unique_ptr<Backend>(std::move(*backend));
#else
    return absl::UnimplementedError("device 'cuda': this build has no CUDA backend (nvcc was not found)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", std::string(device), "' (expected cpu or cuda)"));
}

}  // namespace indexcache
