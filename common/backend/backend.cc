#include "common/backend/backend.h"

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
