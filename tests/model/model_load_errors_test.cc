// Broken checkpoints give clear statuses, never a crash. A golden checkpoint (moe_freq2: F F S F S,
// so layers 2 and 4 carry no indexer weights) is copied to a temporary directory and damaged one way
// per test; loading goes the way Engine::Create goes (LoadModelConfig, then DsaModel::Load on the CPU
// backend — this folder's tests link ic_model only; tests/engine_test.cc covers Engine::Create).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/model/dsa_model.h"
#include "common/safetensors/safetensors_file.h"
#include "common/safetensors/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kGolden = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";

class ModelLoadErrorsTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ic_model_load_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    for (const char* file : {"config.json", "model.safetensors"}) {
      fs::copy_file(kGolden + "/" + file, dir_ + "/" + file);
    }
    auto backend = CreateBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Loads as Engine::Create does, with an optional pattern override.
  absl::Status Load(const std::string& pattern = "") {
    auto config = LoadModelConfig(dir_);
    if (!config.ok()) return config.status();
    if (!pattern.empty()) {
      auto types = ParseIndexPattern(pattern, config->num_layers);
      if (!types.ok()) return types.status();
      config->indexer_types = *types;
    }
    auto model = DsaModel::Load(dir_, *std::move(config), backend_.get());
    return model.status();
  }

  // Rewrites model.safetensors with `edit` applied to the golden's tensors (kept F32 as stored).
  void RewriteWeights(const std::function<void(std::vector<TensorToWrite>&)>& edit) {
    auto file = SafetensorsFile::Open(kGolden + "/model.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    std::vector<TensorToWrite> tensors;
    for (const std::string& name : file->Names()) {
      const TensorView* view = file->Find(name);
      tensors.push_back(TensorToWrite{name, view->dtype, view->shape,
                                      std::vector<std::byte>(view->data, view->data + view->nbytes)});
    }
    edit(tensors);
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", tensors).ok());
  }

  void WriteConfig(const std::string& text) {
    std::ofstream out(dir_ + "/config.json", std::ios::trunc);
    out << text;
  }

  nlohmann::json ReadConfig() {
    std::ifstream in(kGolden + "/config.json");
    std::stringstream text;
    text << in.rdbuf();
    return nlohmann::json::parse(text.str());
  }

  std::string dir_;
  std::unique_ptr<Backend> backend_;
};

TEST_F(ModelLoadErrorsTest, IntactCopyLoads) { EXPECT_TRUE(Load().ok()) << Load(); }

TEST_F(ModelLoadErrorsTest, MissingTensorIsNamedWithItsLayer) {
  const std::string missing = "model.layers.3.self_attn.kv_b_proj.weight";
  RewriteWeights([&](std::vector<TensorToWrite>& tensors) {
    std::erase_if(tensors, [&](const TensorToWrite& t) { return t.name == missing; });
  });
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr(missing));
  EXPECT_THAT(status.message(), HasSubstr("layer 3"));
}

TEST_F(ModelLoadErrorsTest, MissingExpertAndTopLevelTensors) {
  for (const std::string missing : {"model.layers.4.mlp.experts.5.up_proj.weight", "lm_head.weight",
                                    "model.norm.weight", "model.layers.1.mlp.gate.e_score_correction_bias"}) {
    RewriteWeights([&](std::vector<TensorToWrite>& tensors) {
      std::erase_if(tensors, [&](const TensorToWrite& t) { return t.name == missing; });
    });
    absl::Status status = Load();
    ASSERT_FALSE(status.ok()) << missing;
    EXPECT_THAT(status.message(), HasSubstr(missing));
  }
}

TEST_F(ModelLoadErrorsTest, WrongShapeNamesBothShapes) {
  const std::string name = "model.layers.1.self_attn.indexer.wk.weight";  // [index_head_dim 16, hidden 64]
  RewriteWeights([&](std::vector<TensorToWrite>& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name != name) continue;
      ASSERT_EQ(t.shape, (std::vector<int64_t>{16, 64}));
      t.shape = {64, 16};  // transposed: same byte count, wrong shape
    }
  });
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(name));
  EXPECT_THAT(status.message(), HasSubstr("[64, 16]"));
  EXPECT_THAT(status.message(), HasSubstr("[16, 64]"));
  EXPECT_THAT(status.message(), HasSubstr("layer 1"));
}

TEST_F(ModelLoadErrorsTest, WrongDtypeIsRefused) {
  const std::string name = "model.layers.0.input_layernorm.weight";
  RewriteWeights([&](std::vector<TensorToWrite>& tensors) {
    for (TensorToWrite& t : tensors) {
      if (t.name == name) t.dtype = StDType::kI32;  // same size as F32
    }
  });
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(name));
}

TEST_F(ModelLoadErrorsTest, TruncatedSafetensors) {
  const std::string path = dir_ + "/model.safetensors";
  const uintmax_t size = fs::file_size(path);
  for (uintmax_t keep : {size - 1, size / 2, uintmax_t{100}, uintmax_t{4}, uintmax_t{0}}) {
    fs::copy_file(kGolden + "/model.safetensors", path, fs::copy_options::overwrite_existing);
    fs::resize_file(path, keep);
    absl::Status status = Load();
    ASSERT_FALSE(status.ok()) << "kept " << keep << " bytes";
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("model.safetensors")) << status;
  }
}

TEST_F(ModelLoadErrorsTest, NoWeightsAtAll) {
  fs::remove(dir_ + "/model.safetensors");
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
}

TEST_F(ModelLoadErrorsTest, GarbageConfig) {
  for (const std::string text : {"this is not json", "", "{\"vocab_size\": ", "[]", "\x89PNG\r\n\x1a\n"}) {
    WriteConfig(text);
    absl::Status status = Load();
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("config.json"));
  }
  fs::remove(dir_ + "/config.json");
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

// A config that disagrees with the weights: a tensor shape check fails, naming the tensor.
TEST_F(ModelLoadErrorsTest, ConfigDisagreeingWithWeights) {
  nlohmann::json config = ReadConfig();
  config["hidden_size"] = 32;
  WriteConfig(config.dump());
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(status.message(), HasSubstr("[256, 64]"));
  EXPECT_THAT(status.message(), HasSubstr("[256, 32]"));
}

// Layers 2 and 4 were saved Shared (no indexer weights). A config.json that says Full for them,
// and the same asked through a pattern override, name the layer and say what is missing.
TEST_F(ModelLoadErrorsTest, FullLayerWithoutIndexerWeights) {
  nlohmann::json config = ReadConfig();
  config["indexer_types"] = {"full", "full", "full", "full", "shared"};
  WriteConfig(config.dump());
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("layer 2"));
  EXPECT_THAT(status.message(), HasSubstr("indexer"));

  WriteConfig(ReadConfig().dump());
  status = Load("FFSFF");
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("layer 4"));
  EXPECT_THAT(status.message(), HasSubstr("indexer"));
  // Keeping those layers Shared (and dropping more) loads.
  EXPECT_TRUE(Load("FSSSS").ok()) << Load("FSSSS");
}

// A Full layer whose indexer is only partly there (wk present, wq_b missing).
TEST_F(ModelLoadErrorsTest, PartialIndexerWeights) {
  const std::string missing = "model.layers.3.self_attn.indexer.wq_b.weight";
  RewriteWeights([&](std::vector<TensorToWrite>& tensors) {
    std::erase_if(tensors, [&](const TensorToWrite& t) { return t.name == missing; });
  });
  absl::Status status = Load();
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(missing));
  EXPECT_THAT(status.message(), HasSubstr("layer 3"));
}

}  // namespace
}  // namespace indexcache
