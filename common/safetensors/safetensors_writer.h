// Writes .safetensors files: test fixtures, tiny models made by tools, converted checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/safetensors/dtype.h"

namespace indexcache {

struct TensorToWrite {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;  // little-endian elements, product(shape) * StDTypeSize(dtype) bytes
};

// Encodes float values as F32 or BF16 (round to nearest even); other dtypes are InvalidArgument.
// `values.size()` must equal product(shape).
absl::StatusOr<TensorToWrite> MakeTensorFromF32(std::string name, std::vector<int64_t> shape,
                                                absl::Span<const float> values, StDType dtype);

// Writes `tensors` to `path`: header padded with spaces to a multiple of 8 bytes (so the data section
// is 8-byte aligned), tensors sorted by name and laid out back to back in that order. Writes a
// temporary file next to `path` and renames it, so a reader never sees a half-written file.
// InvalidArgument for an empty, repeated or reserved ("__metadata__") name, a negative dim, or a
// byte count that does not match the shape.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace indexcache
