// All the weights of a Hugging Face model directory, by tensor name: either one `model.safetensors`
// or the shards named by `model.safetensors.index.json` ("weight_map": tensor name -> shard file).
// Shards are memory-mapped, so opening a store reads only headers; tensor bytes are paged in when
// a caller converts or copies them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/safetensors/safetensors_file.h"

namespace indexcache {

class WeightStore {
 public:
  // Opens `model_dir`/model.safetensors if present, else the index and each shard it names (each
  // shard once). NotFound when neither file exists; InvalidArgument for a malformed index, a shard
  // path outside the directory, or a tensor the index lists but its shard lacks.
  [[nodiscard]] static absl::StatusOr<WeightStore> Open(const std::string& model_dir);

  bool Contains(std::string_view name) const;
  // NotFound naming the tensor and the directory when absent. The view lives as long as the store.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
  // The tensor converted to float (from F32, BF16 or F16), row-major. InvalidArgument when its shape
  // is not `expected_shape` ("tensor X has shape [a, b], expected [c, d]") or its dtype is another.
  // An F8_E4M3 tensor (an FP8 checkpoint's weight, `name` = "….weight" or "….experts.gate_up_proj")
  // comes dequantized: each code times its block's scale from `name`_scale_inv (float; one per
  // [rows, cols] block of SetFp8WeightBlock over the last two dimensions, leading dimensions such as
  // the experts' kept, or one for the whole tensor), as DeepSeek-V3's and transformers'
  // FineGrainedFP8 checkpoints define it.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             absl::Span<const int64_t> expected_shape) const;
  // The block an FP8 tensor's scales cover (config.json's quantization_config.weight_block_size);
  // until set, an F8_E4M3 tensor is refused.
  void SetFp8WeightBlock(int64_t rows, int64_t cols) { fp8_block_ = {rows, cols}; }
  // Tensor names, sorted.
  std::vector<std::string> Names() const;
  const std::string& model_dir() const { return model_dir_; }

 private:
  WeightStore() = default;
  absl::Status AddSingleFile(const std::string& path);
  absl::Status AddShards(const std::string& index_path);  // reads the index, opens its shards
  // ReadF32 of an F8_E4M3 tensor: the codes' values times their blocks' scales, into `values`.
  absl::Status DequantizeFp8(std::string_view name, const TensorView& tensor, std::vector<float>& values) const;

  std::string model_dir_;
  // The views point into the files' own (heap-allocated) tensor lists, which moving a
  // SafetensorsFile or this vector does not relocate.
  std::vector<SafetensorsFile> files_;
  absl::flat_hash_map<std::string, const TensorView*> tensors_;
  std::array<int64_t, 2> fp8_block_{0, 0};  // {0, 0}: none set
};

}  // namespace indexcache
