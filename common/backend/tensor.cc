#include "common/backend/tensor.h"

#include "absl/strings/str_format.h"

namespace indexcache {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
      return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
  }
  return "?";
}

Tensor Tensor::Rows(int64_t begin, int64_t count) const {
  Tensor view = *this;
  view.data = static_cast<char*>(data) + begin * stride * static_cast<int64_t>(DTypeSize(dtype));
  view.rows = count;
  return view;
}

Tensor Tensor::Cols(int64_t begin, int64_t count) const {
  Tensor view = *this;
  view.data = static_cast<char*>(data) + begin * static_cast<int64_t>(DTypeSize(dtype));
  view.cols = count;
  return view;
}

std::string Tensor::DebugString() const {
  return absl::StrFormat("%s[%d, %d] stride %d", DTypeName(dtype), rows, cols, stride);
}

}  // namespace indexcache
