#include "common/safetensors/weight_store.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// (Debian's absl::string_view is its own type: std::string_view must be converted for StrCat.)
std::string Quoted(std::string_view s) { return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\""); }

bool IsPresent(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

// Shard names come from a file we do not control: only plain relative paths that stay inside the
// model directory are accepted ("../x", "/etc/x" and "a/../../x" are refused).
absl::Status CheckShardName(const std::string& shard) {
  const fs::path path(shard);
  if (shard.empty() || path.has_root_path()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard path ", Quoted(shard), " must be relative to the model directory"));
  }
  for (const fs::path& part : path.lexically_normal()) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("shard path ", Quoted(shard), " escapes the model directory"));
    }
  }
  return absl::OkStatus();
}

// weight_map of the index: tensor name -> shard path relative to the model directory.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadWeightMap(const fs::path& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return absl::UnavailableError("cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  const Json index = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError("expected an object with a \"weight_map\" object");
  }
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight_map[", Quoted(name), "] must be a shard file name (a string), got a ", shard.type_name()));
    }
    RETURN_IF_ERROR(Annotate(CheckShardName(shard.get<std::string>()), absl::StrCat("tensor ", Quoted(name))));
    // Normalized, so that "a/./s.safetensors" and "a/s.safetensors" open one file.
    weight_map.emplace_back(name, fs::path(shard.get<std::string>()).lexically_normal().string());
  }
  return weight_map;
}

}  // namespace

absl::StatusOr<WeightStore> WeightStore::Open(const std::string& model_dir) {
  WeightStore store;
  store.model_dir_ = model_dir;
  const fs::path dir(model_dir);
  if (IsPresent(dir / kSingleFile)) {
    RETURN_IF_ERROR(store.AddSingleFile((dir / kSingleFile).string()));
  } else if (IsPresent(dir / kIndexFile)) {
    RETURN_IF_ERROR(store.AddShards((dir / kIndexFile).string()));
  } else {
    return absl::NotFoundError(absl::StrCat("model directory ", Quoted(model_dir), " has neither ",
                                            kSingleFile, " nor ", kIndexFile));
  }
  return store;
}

absl::Status WeightStore::AddSingleFile(const std::string& path) {
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  files_.push_back(std::move(file));
  for (const std::string& name : files_.back().Names()) tensors_[name] = files_.back().Find(name);
  return absl::OkStatus();
}

absl::Status WeightStore::AddShards(const std::string& index_path) {
  const std::string context = absl::StrCat("index ", Quoted(index_path));
  auto weight_map = ReadWeightMap(index_path);
  if (!weight_map.ok()) return Annotate(weight_map.status(), context);

  // Open each distinct shard once (however the index spells its path); views are taken only after
  // files_ stops growing.
  absl::flat_hash_map<std::string, size_t> shard_file;  // shard path -> index into files_
  for (const auto& [name, shard] : *weight_map) {
    if (shard_file.contains(shard)) continue;
    auto file = SafetensorsFile::Open((fs::path(model_dir_) / shard).string());
    if (!file.ok()) return Annotate(file.status(), absl::StrCat(context, ": shard ", Quoted(shard)));
    shard_file[shard] = files_.size();
    files_.push_back(*std::move(file));
  }
  // Only the tensors the index lists belong to the model (a shard may carry others).
  for (const auto& [name, shard] : *weight_map) {
    const TensorView* tensor = files_[shard_file[shard]].Find(name);
    if (tensor == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(context, ": tensor ", Quoted(name), " is listed in shard ",
                                                     Quoted(shard), " but that file does not contain it"));
    }
    tensors_[name] = tensor;
  }
  return absl::OkStatus();
}

bool WeightStore::Contains(std::string_view name) const { return tensors_.contains(absl::string_view(name.data(), name.size())); }

absl::StatusOr<const TensorView*> WeightStore::Get(std::string_view name) const {
  const auto it = tensors_.find(absl::string_view(name.data(), name.size()));
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", Quoted(name), " not found in model directory ", Quoted(model_dir_)));
  }
  return it->second;
}

absl::StatusOr<std::vector<float>> WeightStore::ReadF32(std::string_view name,
                                                        absl::Span<const int64_t> expected_shape) const {
  ASSIGN_OR_RETURN(const TensorView* tensor, Get(name));
  if (!std::equal(tensor->shape.begin(), tensor->shape.end(), expected_shape.begin(), expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " has shape ", ShapeToString(tensor->shape),
                                                   ", expected ", ShapeToString(expected_shape)));
  }
  std::vector<float> values(tensor->nbytes / StDTypeSize(tensor->dtype));
  RETURN_IF_ERROR(Annotate(ConvertToF32(tensor->dtype, tensor->data, values.size(), values.data()),
                           absl::StrCat("tensor ", Quoted(name), " in ", Quoted(model_dir_))));
  if (tensor->dtype == StDType::kF8E4M3) RETURN_IF_ERROR(DequantizeFp8(name, *tensor, values));
  return values;
}

absl::Status WeightStore::DequantizeFp8(std::string_view name, const TensorView& tensor,
                                        std::vector<float>& values) const {
  const std::string where = absl::StrCat("FP8 tensor ", Quoted(name), " in ", Quoted(model_dir_));
  if (fp8_block_[0] <= 0 || fp8_block_[1] <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": config.json has no quantization_config (quant_method \"fp8\", weight_block_size) for it"));
  }
  if (tensor.shape.size() < 2) return absl::InvalidArgumentError(absl::StrCat(where, ": block scales need 2 dimensions"));
  const std::string scale_name = absl::StrCat(absl::string_view(name.data(), name.size()), "_scale_inv");
  const absl::StatusOr<const TensorView*> scale_tensor = Get(scale_name);
  if (!scale_tensor.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": its scales ", Quoted(scale_name), " are missing"));
  std::vector<float> scales((*scale_tensor)->nbytes / StDTypeSize((*scale_tensor)->dtype));
  RETURN_IF_ERROR(Annotate(ConvertToF32((*scale_tensor)->dtype, (*scale_tensor)->data, scales.size(), scales.data()),
                           absl::StrCat("tensor ", Quoted(scale_name))));
  const int64_t rows = tensor.shape[tensor.shape.size() - 2], cols = tensor.shape.back();
  const int64_t batch = static_cast<int64_t>(values.size()) / std::max<int64_t>(rows * cols, 1);
  if (scales.size() == 1) {
    // One scale for the whole tensor (per-tensor FP8).
    for (float& v : values) v *= scales[0];
    return absl::OkStatus();
  }
  const int64_t block_rows = (rows + fp8_block_[0] - 1) / fp8_block_[0];
  const int64_t block_cols = (cols + fp8_block_[1] - 1) / fp8_block_[1];
  std::vector<int64_t> expected(tensor.shape.begin(), tensor.shape.end() - 2);
  expected.push_back(block_rows);
  expected.push_back(block_cols);
  if ((*scale_tensor)->shape != expected) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": its scales have shape ", ShapeToString((*scale_tensor)->shape),
                                                   ", expected ", ShapeToString(expected), " for blocks of ",
                                                   fp8_block_[0], "x", fp8_block_[1]));
  }
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < rows; ++r) {
      float* row = values.data() + (b * rows + r) * cols;
      const float* block_scales = scales.data() + (b * block_rows + r / fp8_block_[0]) * block_cols;
      for (int64_t c = 0; c < cols; ++c) row[c] *= block_scales[c / fp8_block_[1]];
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace indexcache
