#include "common/model/model_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

using Json = nlohmann::json;

absl::Status KeyError(std::string_view key, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: '", std::string(key), "' ", std::string(problem)));
}

// Reads an integer key; `fallback` < 0 means the key is required.
absl::StatusOr<int32_t> GetInt(const Json& j, const char* key, int64_t fallback = -1, int64_t min = 0) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback < 0) return KeyError(key, "is missing");
    return static_cast<int32_t>(fallback);
  }
  if (!j[key].is_number_integer()) return KeyError(key, "must be an integer");
  const int64_t v = j[key].get<int64_t>();
  if (v < min || v > (int64_t{1} << 30)) return KeyError(key, absl::StrCat("has out-of-range value ", v));
  return static_cast<int32_t>(v);
}

absl::StatusOr<double> GetNumber(const Json& j, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) return KeyError(key, "must be a number");
  const double v = j[key].get<double>();
  if (!std::isfinite(v)) return KeyError(key, "must be finite");
  return v;
}

absl::StatusOr<bool> GetBool(const Json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return KeyError(key, "must be true or false");
  return j[key].get<bool>();
}

// bos/eos ids: an integer, a list of integers, or null.
absl::StatusOr<std::vector<int32_t>> GetIdList(const Json& j, const char* key, int32_t fallback) {
  if (!j.contains(key)) return std::vector<int32_t>{fallback};
  const Json& v = j[key];
  if (v.is_null()) return std::vector<int32_t>{};
  if (v.is_number_integer()) return std::vector<int32_t>{v.get<int32_t>()};
  if (!v.is_array()) return KeyError(key, "must be an integer or a list of integers");
  std::vector<int32_t> ids;
  for (const Json& e : v) {
    if (!e.is_number_integer()) return KeyError(key, "must hold integers only");
    ids.push_back(e.get<int32_t>());
  }
  return ids;
}

absl::Status ParseRope(const Json& j, ModelConfig& c) {
  Json rope = Json::object();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    rope = j["rope_parameters"];
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    rope = j["rope_scaling"];  // pre-v5 configs
  }
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (rope.contains(key) && rope[key].is_string()) type = rope[key].get<std::string>();
  }
  if (type != "default") {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: rope type '", type, "' is not supported yet (supported: default)"));
  }
  ASSIGN_OR_RETURN(double partial, GetNumber(rope, "partial_rotary_factor", 1.0));
  if (partial != 1.0) return absl::UnimplementedError("config.json: partial_rotary_factor != 1 is not supported yet");
  ASSIGN_OR_RETURN(double top_theta, GetNumber(j, "rope_theta", 10000.0));
  ASSIGN_OR_RETURN(c.rope_theta, GetNumber(rope, "rope_theta", top_theta));
  if (c.rope_theta <= 0) return KeyError("rope_theta", "must be positive");
  return absl::OkStatus();
}

absl::Status ParseMlpTypes(const Json& j, ModelConfig& c) {
  if (j.contains("mlp_layer_types") && !j["mlp_layer_types"].is_null()) {
    const Json& types = j["mlp_layer_types"];
    if (!types.is_array() || static_cast<int32_t>(types.size()) != c.num_layers) {
      return KeyError("mlp_layer_types", absl::StrCat("must list one entry per layer (", c.num_layers, ")"));
    }
    for (const Json& t : types) {
      const std::string s = t.is_string() ? t.get<std::string>() : "";
      if (s == "dense") {
        c.mlp_types.push_back(MlpType::kDense);
      } else if (s == "sparse") {
        c.mlp_types.push_back(MlpType::kMoe);
      } else {
        return KeyError("mlp_layer_types", absl::StrCat("has unknown entry ", t.dump(), " (dense|sparse)"));
      }
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(int32_t first_dense, GetInt(j, "first_k_dense_replace", 3));
  for (int32_t i = 0; i < c.num_layers; ++i) {
    c.mlp_types.push_back(i < first_dense ? MlpType::kDense : MlpType::kMoe);
  }
  return absl::OkStatus();
}

absl::Status ParseIndexerTypes(const Json& j, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.index_skip_topk_offset, GetInt(j, "index_skip_topk_offset", 2, /*min=*/-(1 << 30)));
  if (j.contains("indexer_types") && !j["indexer_types"].is_null()) {
    const Json& types = j["indexer_types"];
    if (!types.is_array()) return KeyError("indexer_types", "must be a list of \"full\"/\"shared\"");
    std::string pattern;
    for (const Json& t : types) {
      const std::string s = t.is_string() ? t.get<std::string>() : "";
      if (s != "full" && s != "shared") {
        return KeyError("indexer_types", absl::StrCat("has unknown entry ", t.dump(), " (full|shared)"));
      }
      pattern += s == "full" ? 'F' : 'S';
    }
    ASSIGN_OR_RETURN(c.indexer_types, ParseIndexPattern(pattern, c.num_layers));
    return absl::OkStatus();
  }
  if (j.contains("index_topk_pattern") && !j["index_topk_pattern"].is_null()) {
    const Json& p = j["index_topk_pattern"];
    std::string pattern;
    if (p.is_string()) {
      pattern = p.get<std::string>();
    } else if (p.is_array()) {  // transformers also accepts a list of "full"/"shared"
      for (const Json& t : p) {
        if (t != "full" && t != "shared") {
          return KeyError("index_topk_pattern", absl::StrCat("has unknown entry ", t.dump(), " (full|shared)"));
        }
        pattern += t == "full" ? 'F' : 'S';
      }
    } else {
      return KeyError("index_topk_pattern", "must be a string of F/S");
    }
    ASSIGN_OR_RETURN(c.indexer_types, ParseIndexPattern(pattern, c.num_layers));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(int32_t freq, GetInt(j, "index_topk_freq", 1, /*min=*/-(1 << 30)));

  // transformers clamps the frequency to at least 1.
  ASSIGN_OR_RETURN(c.indexer_types, IndexPatternFromFreq(std::max(freq, 1), c.index_skip_topk_offset, c.num_layers));
  return absl::OkStatus();
}

// quantization_config: absent, or FineGrainedFP8's (DeepSeek-V3, GLM-5 FP8): quant_method "fp8", fmt
// "e4m3" (when given), weight_block_size [rows, cols] (default [128, 128]). Other methods are refused
// by name rather than loaded as if they were unquantized.
absl::Status ParseQuantization(const Json& j, ModelConfig& c) {
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return absl::OkStatus();
  const Json& q = j["quantization_config"];
  if (!q.is_object()) return KeyError("quantization_config", "must be an object");
  const std::string method = q.contains("quant_method") && q["quant_method"].is_string() ? q["quant_method"].get<std::string>() : "";
  if (method != "fp8") {
    return absl::UnimplementedError(absl::StrCat("config.json: quantization_config.quant_method \"", method,
                                                 "\" is not supported (only \"fp8\", block-scaled e4m3)"));
  }
  if (q.contains("fmt") && q["fmt"] != "e4m3") {
    return KeyError("quantization_config.fmt", absl::StrCat(q["fmt"].dump(), " is not supported (only \"e4m3\")"));
  }
  std::array<int64_t, 2> block = {128, 128};
  if (q.contains("weight_block_size") && !q["weight_block_size"].is_null()) {
    const Json& b = q["weight_block_size"];
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int64_t>() < 1 || b[1].get<int64_t>() < 1) {
      return KeyError("quantization_config.weight_block_size", "must be two positive integers [rows, cols]");
    }
    block = {b[0].get<int64_t>(), b[1].get<int64_t>()};
  }
  c.fp8_weight_block = block;
  return absl::OkStatus();
}

}  // namespace

int32_t ModelConfig::num_full_layers() const {
  int32_t n = 0;
  for (IndexerType t : indexer_types) n += t == IndexerType::kFull;
  return n;
}

int32_t ModelConfig::SourceFullLayer(int32_t layer) const {
  while (layer > 0 && indexer_types[layer] == IndexerType::kShared) --layer;
  return layer;
}

absl::StatusOr<std::vector<IndexerType>> ParseIndexPattern(std::string_view pattern, int32_t num_layers) {
  std::vector<IndexerType> types;
  for (char ch : pattern) {
    if (ch == 'F') {
      types.push_back(IndexerType::kFull);
    } else if (ch == 'S') {
      types.push_back(IndexerType::kShared);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("index pattern '", std::string(pattern), "': only 'F' (full) and 'S' (shared) are allowed"));
    }
  }
  RETURN_IF_ERROR(ValidateIndexPattern(types, num_layers));
  return types;
}

absl::StatusOr<std::vector<IndexerType>> IndexPatternFromFreq(int32_t freq, int32_t offset, int32_t num_layers) {
  if (freq < 1) return absl::InvalidArgumentError(absl::StrCat("index frequency must be >= 1, got ", freq));
  std::vector<IndexerType> types;
  for (int32_t i = 0; i < num_layers; ++i) {
    types.push_back(std::max(i - offset + 1, 0) % freq == 0 ? IndexerType::kFull : IndexerType::kShared);
  }
  RETURN_IF_ERROR(ValidateIndexPattern(types, num_layers));
  return types;
}

absl::Status ValidateIndexPattern(const std::vector<IndexerType>& types, int32_t num_layers) {
  if (static_cast<int32_t>(types.size()) != num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "index pattern '%s' has %d layers but the model has %d", FormatIndexPattern(types), types.size(), num_layers));
  }
  if (!types.empty() && types[0] == IndexerType::kShared) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index pattern '", FormatIndexPattern(types),
        "' starts with a Shared layer: layer 0 must be Full, a Shared layer reuses an earlier Full layer's top-k"));
  }
  return absl::OkStatus();
}

std::string FormatIndexPattern(const std::vector<IndexerType>& types) {
  std::string s;
  for (IndexerType t : types) s += t == IndexerType::kFull ? 'F' : 'S';
  return s;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  if (j.contains("model_type") && j["model_type"] != "glm_moe_dsa") {
    return absl::InvalidArgumentError(absl::StrCat("config.json: model_type ", j["model_type"].dump(),
                                                   " is not supported (expected \"glm_moe_dsa\")"));
  }
  ModelConfig c;
  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, "vocab_size", -1, 1));
  ASSIGN_OR_RETURN(c.hidden_size, GetInt(j, "hidden_size", -1, 1));
  ASSIGN_OR_RETURN(c.num_layers, GetInt(j, "num_hidden_layers", -1, 1));
  ASSIGN_OR_RETURN(c.num_heads, GetInt(j, "num_attention_heads", -1, 1));
  ASSIGN_OR_RETURN(int32_t kv_heads, GetInt(j, "num_key_value_heads", c.num_heads, 1));
  if (kv_heads != c.num_heads) {
    return KeyError("num_key_value_heads", "must equal num_attention_heads (MLA has no grouped KV heads)");
  }
  if (!j.contains("q_lora_rank") || j["q_lora_rank"].is_null()) {
    return KeyError("q_lora_rank", "must be set: the DSA indexer reads the q LoRA activations");
  }
  ASSIGN_OR_RETURN(c.q_lora_rank, GetInt(j, "q_lora_rank", -1, 1));
  ASSIGN_OR_RETURN(c.kv_lora_rank, GetInt(j, "kv_lora_rank", -1, 1));
  ASSIGN_OR_RETURN(c.qk_nope_head_dim, GetInt(j, "qk_nope_head_dim", -1, 1));
  ASSIGN_OR_RETURN(c.qk_rope_head_dim, GetInt(j, "qk_rope_head_dim", -1, 2));
  if (c.qk_rope_head_dim % 2 != 0) return KeyError("qk_rope_head_dim", "must be even");
  ASSIGN_OR_RETURN(c.v_head_dim, GetInt(j, "v_head_dim", -1, 1));
  ASSIGN_OR_RETURN(c.index_n_heads, GetInt(j, "index_n_heads", 32, 1));
  ASSIGN_OR_RETURN(c.index_head_dim, GetInt(j, "index_head_dim", 128, 1));
  if (c.index_head_dim < c.qk_rope_head_dim) {
    return KeyError("index_head_dim", "must be at least qk_rope_head_dim (the indexer ropes that many dims)");
  }
  ASSIGN_OR_RETURN(c.index_topk, GetInt(j, "index_topk", 2048, 1));
  ASSIGN_OR_RETURN(c.intermediate_size, GetInt(j, "intermediate_size", -1, 1));
  ASSIGN_OR_RETURN(c.moe_intermediate_size, GetInt(j, "moe_intermediate_size", -1, 1));
  ASSIGN_OR_RETURN(int32_t experts_alias, GetInt(j, "num_experts", 0));
  ASSIGN_OR_RETURN(c.n_routed_experts, GetInt(j, "n_routed_experts", experts_alias > 0 ? experts_alias : 256, 1));
  if (experts_alias > 0) c.n_routed_experts = experts_alias;  // transformers lets num_experts win
  ASSIGN_OR_RETURN(c.num_experts_per_tok, GetInt(j, "num_experts_per_tok", 8, 1));
  ASSIGN_OR_RETURN(c.n_shared_experts, GetInt(j, "n_shared_experts", 1, 0));
  ASSIGN_OR_RETURN(c.n_group, GetInt(j, "n_group", 1, 1));
  ASSIGN_OR_RETURN(c.topk_group, GetInt(j, "topk_group", 1, 1));
  ASSIGN_OR_RETURN(c.norm_topk_prob, GetBool(j, "norm_topk_prob", true));
  ASSIGN_OR_RETURN(double scaling, GetNumber(j, "routed_scaling_factor", 2.5));
  c.routed_scaling_factor = static_cast<float>(scaling);
  ASSIGN_OR_RETURN(double eps, GetNumber(j, "rms_norm_eps", 1e-5));
  c.rms_norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(c.tie_word_embeddings, GetBool(j, "tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.max_position_embeddings, GetInt(j, "max_position_embeddings", 202752, 1));
  ASSIGN_OR_RETURN(c.bos_token_ids, GetIdList(j, "bos_token_id", 0));
  ASSIGN_OR_RETURN(c.eos_token_ids, GetIdList(j, "eos_token_id", 1));
  ASSIGN_OR_RETURN(bool attention_bias, GetBool(j, "attention_bias", false));
  if (attention_bias) return absl::UnimplementedError("config.json: attention_bias=true is not supported yet");
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return absl::UnimplementedError(absl::StrCat("config.json: hidden_act ", j["hidden_act"].dump(),
                                                 " is not supported (only silu)"));
  }
  if (c.n_routed_experts % c.n_group != 0) return KeyError("n_group", "must divide n_routed_experts");
  if (c.topk_group > c.n_group) return KeyError("topk_group", "must not exceed n_group");
  if (c.num_experts_per_tok > c.n_routed_experts) return KeyError("num_experts_per_tok", "exceeds n_routed_experts");
  RETURN_IF_ERROR(ParseRope(j, c));
  RETURN_IF_ERROR(ParseQuantization(j, c));
  RETURN_IF_ERROR(ParseMlpTypes(j, c));
  RETURN_IF_ERROR(ParseIndexerTypes(j, c));
  c.attention_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.qk_head_dim())));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  auto config = ParseModelConfig(text.str());
  if (!config.ok()) return Annotate(config.status(), path);
  return config;
}

}  // namespace indexcache
