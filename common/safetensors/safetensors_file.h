// One .safetensors file, memory-mapped read-only and validated once at Open.
//
// Layout: [u64 little-endian N][N bytes of JSON header][data section]. The header maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data section;
// an optional "__metadata__" entry maps strings to strings. Open checks every entry (dtype known,
// dims non-negative integers, end within the data section, byte size == product(shape) * element
// size without overflow, no two tensors overlapping), so a TensorView handed out is always in bounds
// and a corrupt or hostile file is an error status, never a crash. Gaps between tensors are allowed.
// The file must not be truncated while mapped (reading a lost page raises SIGBUS): checkpoints are
// treated as immutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/safetensors/dtype.h"

namespace indexcache {

// A tensor inside a mapped file. `data` points into the mapping (any alignment) and stays valid as
// long as the SafetensorsFile that handed it out, even when that file object is moved.
struct TensorView {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;  // empty for a scalar
  const std::byte* data;
  size_t nbytes;  // == product(shape) * StDTypeSize(dtype)
};

// "[2, 3]": how shapes are written in error messages.
std::string ShapeToString(absl::Span<const int64_t> shape);

class SafetensorsFile {
 public:
  // Maps and validates `path`; errors name the file and, where one is at fault, the tensor.
  [[nodiscard]] static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();  // unmaps

  // nullptr when the file has no tensor called `name`.
  const TensorView* Find(std::string_view name) const;
  // Tensor names, sorted.
  std::vector<std::string> Names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  // The bytes after the header; every TensorView lies inside this span.
  absl::Span<const std::byte> data_section() const { return data_section_; }

 private:
  SafetensorsFile() = default;
  void Unmap();

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  absl::Span<const std::byte> data_section_;
  std::vector<TensorView> tensors_;  // header order is not meaningful; sorted by name
  absl::flat_hash_map<std::string, size_t> by_name_;  // name -> index into tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace indexcache
