// FP8 block-scaled checkpoints (DeepSeek-V3 / GLM-5 FP8 layout: F8_E4M3 weights, a float
// `weight_scale_inv` per block, quantization_config in config.json) load and serve. A golden
// checkpoint is quantized here to e4m3 in 16x16 blocks (edge blocks partial) for every projection, as
// the FP8 releases do (embeddings, the head, norms and the router stay as they were); beside it the
// same weights dequantized in float are written as a plain F32 checkpoint. The engine on the FP8
// checkpoint must generate exactly what it generates on the dequantized one — tokens and their
// log-probabilities, bit for bit — since dequantization at load is the CPU path's whole job. A
// checkpoint whose quantization method is not FP8 is refused by name.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/safetensors/dtype.h"
#include "common/safetensors/safetensors_file.h"
#include "common/safetensors/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

namespace fs = std::filesystem;

const std::string kGolden = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";
constexpr int64_t kBlock = 16;

bool Quantized(const std::string& name, const std::vector<int64_t>& shape) {
  auto ends_with = [&](std::string_view suffix) { return name.ends_with(suffix); };
  return shape.size() == 2 && ends_with(".weight") && name.find("embed_tokens") == std::string::npos &&
         name.find("lm_head") == std::string::npos && name.find("norm") == std::string::npos &&
         !ends_with("mlp.gate.weight");
}

// The e4m3 code nearest to `x` (which lies within ±448), by search over every finite code.
uint8_t NearestE4m3(float x) {
  uint8_t best = 0;
  float best_error = INFINITY;
  for (int code = 0; code < 256; ++code) {
    const float value = F8E4M3ToF32(static_cast<uint8_t>(code));
    if (std::isnan(value)) continue;
    const float error = std::fabs(value - x);
    if (error < best_error) {
      best_error = error;
      best = static_cast<uint8_t>(code);
    }
  }
  return best;
}

std::vector<std::byte> F32Bytes(const std::vector<float>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(float));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

class Fp8CheckpointTest : public testing::Test {
 protected:
  void SetUp() override {
    for (std::string* dir : {&fp8_dir_, &dequantized_dir_}) {
      std::string tmpl = (fs::temp_directory_path() / "ic_fp8_XXXXXX").string();
      ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
      *dir = tmpl;
    }
    auto file = SafetensorsFile::Open(kGolden + "/model.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    std::vector<TensorToWrite> fp8, dequantized;
    for (const std::string& name : file->Names()) {
      const TensorView* view = file->Find(name);
      ASSERT_EQ(view->dtype, StDType::kF32) << name;
      std::vector<float> values(view->nbytes / sizeof(float));
      std::memcpy(values.data(), view->data, view->nbytes);
      if (!Quantized(name, view->shape)) {
        fp8.push_back({name, StDType::kF32, view->shape, F32Bytes(values)});
        dequantized.push_back({name, StDType::kF32, view->shape, F32Bytes(values)});
        continue;
      }
      ++quantized_;
      const int64_t rows = view->shape[0], cols = view->shape[1];
      const int64_t block_rows = (rows + kBlock - 1) / kBlock, block_cols = (cols + kBlock - 1) / kBlock;
      std::vector<float> scales(block_rows * block_cols);
      for (int64_t br = 0; br < block_rows; ++br) {
        for (int64_t bc = 0; bc < block_cols; ++bc) {
          float amax = 0;
          for (int64_t r = br * kBlock; r < std::min(rows, (br + 1) * kBlock); ++r) {
            for (int64_t c = bc * kBlock; c < std::min(cols, (bc + 1) * kBlock); ++c) {
              amax = std::max(amax, std::fabs(values[r * cols + c]));
            }
          }
          scales[br * block_cols + bc] = amax > 0 ? amax / 448.0f : 1.0f;
        }
      }
      std::vector<std::byte> codes(values.size());
      std::vector<float> back(values.size());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float scale = scales[(r / kBlock) * block_cols + c / kBlock];
          const uint8_t code = NearestE4m3(values[r * cols + c] / scale);
          codes[r * cols + c] = static_cast<std::byte>(code);
          back[r * cols + c] = F8E4M3ToF32(code) * scale;
        }
      }
      fp8.push_back({name, StDType::kF8E4M3, view->shape, std::move(codes)});
      fp8.push_back({name + "_scale_inv", StDType::kF32, {block_rows, block_cols}, F32Bytes(scales)});
      dequantized.push_back({name, StDType::kF32, view->shape, F32Bytes(back)});
    }
    ASSERT_TRUE(WriteSafetensors(fp8_dir_ + "/model.safetensors", fp8).ok());
    ASSERT_TRUE(WriteSafetensors(dequantized_dir_ + "/model.safetensors", dequantized).ok());

    std::ifstream in(kGolden + "/config.json");
    std::stringstream text;
    text << in.rdbuf();
    config_ = nlohmann::json::parse(text.str());
    WriteConfig(dequantized_dir_, config_);
    nlohmann::json fp8_config = config_;
    fp8_config["quantization_config"] = {{"quant_method", "fp8"},
                                         {"fmt", "e4m3"},
                                         {"activation_scheme", "dynamic"},
                                         {"weight_block_size", {kBlock, kBlock}}};
    WriteConfig(fp8_dir_, fp8_config);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(fp8_dir_, ignored);
    fs::remove_all(dequantized_dir_, ignored);
  }

  static void WriteConfig(const std::string& dir, const nlohmann::json& config) {
    std::ofstream out(dir + "/config.json", std::ios::trunc);
    out << config.dump(2);
  }

  // Greedy generation of 10 tokens on `dir`'s checkpoint: each token and its log-probability.
  static std::vector<std::pair<int32_t, float>> Generate(const std::string& dir) {
    std::vector<std::pair<int32_t, float>> out;
    EngineOptions options;
    options.model_dir = dir;
    auto engine = Engine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return out;
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < 37; ++i) prompt.push_back(3 + (i * 41) % 250);
    SamplingParams params;
    params.temperature = 0.0f;
    params.max_new_tokens = 10;
    params.ignore_eos = true;
    params.logprobs = true;
    auto id = (*engine)->Submit(prompt, params);
    EXPECT_TRUE(id.ok()) << id.status();
    while ((*engine)->HasWork()) {
      absl::StatusOr<std::vector<TokenEvent>> events = (*engine)->Step();
      EXPECT_TRUE(events.ok()) << events.status();
      if (!events.ok()) break;
      for (const TokenEvent& e : *events) {
        if (e.token < 0) continue;
        EXPECT_TRUE(e.logprobs.has_value());
        out.emplace_back(e.token, e.logprobs.has_value() ? e.logprobs->chosen.logprob : NAN);
      }
    }
    return out;
  }

  std::string fp8_dir_, dequantized_dir_;
  nlohmann::json config_;
  int quantized_ = 0;
};

TEST_F(Fp8CheckpointTest, GeneratesExactlyWhatItsDequantizedWeightsGenerate) {
  ASSERT_EQ(quantized_, 145) << "every projection of every layer is quantized";
  const std::vector<std::pair<int32_t, float>> fp8 = Generate(fp8_dir_);
  const std::vector<std::pair<int32_t, float>> dequantized = Generate(dequantized_dir_);
  ASSERT_EQ(fp8.size(), 10u);
  EXPECT_EQ(fp8, dequantized);
}

TEST_F(Fp8CheckpointTest, OtherQuantizationMethodsAndFormatsAreRefusedByName) {
  nlohmann::json config = config_;
  config["quantization_config"] = {{"quant_method", "awq"}};
  WriteConfig(fp8_dir_, config);
  EngineOptions options;
  options.model_dir = fp8_dir_;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(engine.status().message()), ::testing::HasSubstr("\"awq\""));

  config["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e5m2"}};
  WriteConfig(fp8_dir_, config);
  engine = Engine::Create(options);
  EXPECT_FALSE(engine.ok());
  EXPECT_THAT(std::string(engine.status().message()), ::testing::HasSubstr("e5m2"));

  // FP8 weights without a quantization_config are not read as raw codes.
  WriteConfig(fp8_dir_, config_);
  engine = Engine::Create(options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(engine.status().message()), ::testing::HasSubstr("quantization_config"));
}

}  // namespace
}  // namespace indexcache
