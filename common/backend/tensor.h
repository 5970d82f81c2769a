// A Tensor is a non-owning 2-D view of backend (device-resident) memory: `rows` × `cols` elements of
// `dtype`, consecutive rows `stride` elements apart. Everything the model passes to backend ops is a
// Tensor; multi-head and per-expert layouts are expressed as 2-D blocks whose head/expert count the op
// takes explicitly (e.g. experts' weights [E·out, in]), which keeps the op set small and the views cheap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace indexcache {

enum class DType : uint8_t { kF32, kBF16, kI32 };

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;  // elements between the starts of consecutive rows; == cols when contiguous

  static Tensor Matrix(void* data, DType dtype, int64_t rows, int64_t cols) {
    return Tensor{data, dtype, rows, cols, cols};
  }

  bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  bool contiguous() const { return stride == cols; }
  int64_t numel() const { return rows * cols; }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }

  // Rows [begin, begin + count) of this view.
  Tensor Rows(int64_t begin, int64_t count) const;
  // Columns [begin, begin + count) of every row (a strided view).
  Tensor Cols(int64_t begin, int64_t count) const;

  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  template <typename T>
  T* row(int64_t r) const {
    return static_cast<T*>(data) + r * stride;
  }

  std::string DebugString() const;
};

}  // namespace indexcache
