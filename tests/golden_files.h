// The transformers goldens (tests/data/goldens, written by tools/make_goldens.py) as both engine
// checks read them: tests/golden_test.cc (CPU backend, exact) and tools/gpu/cuda_engine_check.cc
// (CUDA backend, bf16 bounds). Needs INDEXCACHE_TEST_DATA and INDEXCACHE_MODELS_DIR defined.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/safetensors/safetensors_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace indexcache {

inline const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// The tensor's values, and its shape into `shape` when given; empty (and an empty shape) when the
// file has no such tensor.
template <typename T>
std::vector<T> ReadTensor(const SafetensorsFile& file, const std::string& name, std::vector<int64_t>* shape = nullptr) {
  const TensorView* view = file.Find(name);
  if (shape != nullptr) shape->clear();
  if (view == nullptr) return {};
  if (shape != nullptr) *shape = view->shape;
  std::vector<T> values(view->nbytes / sizeof(T));
  std::memcpy(values.data(), view->data, view->nbytes);
  return values;
}

// One golden case run with one prefill chunk size (max_batch_tokens).
struct GoldenCase {
  std::string name;       // folder under tests/data/goldens
  std::string model_dir;  // the checkpoint: the folder itself, or a bundled model
  int32_t chunk;
};

inline std::string GoldenCaseName(const testing::TestParamInfo<GoldenCase>& info) {
  return info.param.name + "_chunk" + std::to_string(info.param.chunk);
}

// Every golden, one-shot and in small chunks (chunked prefill must not change anything).
inline std::vector<GoldenCase> AllGoldenCases() {
  std::vector<GoldenCase> cases;
  for (const std::string name : {"dense_allfull", "moe_freq2", "moe_pattern", "dense_topk_ge_len"}) {
    for (int32_t chunk : {512, 7}) cases.push_back({name, kGoldens + name, chunk});
  }
  for (int32_t chunk : {512, 13}) cases.push_back({"bundled", std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random", chunk});
  // The trained default model (tools/train/): 16 layers, sparse top-128 rows past position 128.
  for (int32_t chunk : {512, 13}) cases.push_back({"trained", std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained", chunk});
  return cases;
}

}  // namespace indexcache
