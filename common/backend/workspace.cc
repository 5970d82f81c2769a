#include "common/backend/workspace.h"

#include "common/util/status_macros.h"

namespace indexcache {

absl::Status Workspace::Commit() {
  const size_t needed = offset_;
  measuring_ = false;
  offset_ = 0;
  if (buffer_.bytes() < needed) {
    buffer_ = Buffer();  // free first: the old buffer may be most of the memory
    ASSIGN_OR_RETURN(buffer_, backend_->Allocate(needed + needed / 4));
  }
  return absl::OkStatus();
}

Tensor Workspace::Take(DType dtype, int64_t rows, int64_t cols) {
  const size_t bytes = (static_cast<size_t>(rows * cols) * DTypeSize(dtype) + 255) / 256 * 256;
  void* data = measuring_ ? nullptr : static_cast<char*>(buffer_.data()) + offset_;
  offset_ += bytes;
  return Tensor::Matrix(data, dtype, rows, cols);
}

}  // namespace indexcache
