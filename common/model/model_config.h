// The computation-relevant part of a Hugging Face `glm_moe_dsa` config.json, validated, with the
// IndexCache layer pattern resolved to one Full/Shared entry per layer exactly as transformers 5.17
// does (`indexer_types`, else `index_topk_pattern`, else `index_topk_freq`/`index_skip_topk_offset`).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace indexcache {

enum class IndexerType : uint8_t { kFull, kShared };
enum class MlpType : uint8_t { kDense, kMoe };

struct ModelConfig {
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;

  // Multi-head latent attention.
  int32_t q_lora_rank = 0;
  int32_t kv_lora_rank = 0;
  int32_t qk_nope_head_dim = 0;
  int32_t qk_rope_head_dim = 0;
  int32_t v_head_dim = 0;
  double rope_theta = 10000.0;
  float attention_scale = 0.0f;  // softmax scale: qk_head_dim^-0.5 (default RoPE has no mscale)

  // DSA lightning indexer.
  int32_t index_n_heads = 0;
  int32_t index_head_dim = 0;
  int32_t index_topk = 0;

  // Feed-forward.
  int32_t intermediate_size = 0;
  int32_t moe_intermediate_size = 0;
  int32_t n_routed_experts = 0;
  int32_t num_experts_per_tok = 0;
  int32_t n_shared_experts = 0;
  int32_t n_group = 1;
  int32_t topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
  std::vector<MlpType> mlp_types;  // one per layer

  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  int32_t max_position_embeddings = 0;
  std::vector<int32_t> bos_token_ids;
  std::vector<int32_t> eos_token_ids;

  // FP8 checkpoints (quantization_config, quant_method "fp8", e4m3): the [rows, cols] block each
  // weight_scale_inv entry scales; unset for unquantized checkpoints. Weights are dequantized at load.
  std::optional<std::array<int64_t, 2>> fp8_weight_block;

  // IndexCache: which layers run their indexer (Full) and which reuse the previous Full layer's top-k.
  std::vector<IndexerType> indexer_types;
  int32_t index_skip_topk_offset = 2;  // where an --index-freq schedule starts (transformers' default 2)

  int32_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Per-token width of the MLA latent cache: the normalized kv latent and the shared rope key.
  int32_t latent_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  int32_t num_full_layers() const;
  // Index of the Full layer whose top-k layer `layer` uses (itself when Full).
  int32_t SourceFullLayer(int32_t layer) const;
};

// Parses config.json text. Errors name the offending key.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// "FSSF…" → per-layer types; refuses other letters, a length other than num_layers and a Shared
// first layer (a Shared layer needs a Full layer before it).
absl::StatusOr<std::vector<IndexerType>> ParseIndexPattern(std::string_view pattern, int32_t num_layers);
// transformers' schedule: layer i is Full iff max(i - offset + 1, 0) % freq == 0.
absl::StatusOr<std::vector<IndexerType>> IndexPatternFromFreq(int32_t freq, int32_t offset, int32_t num_layers);
std::string FormatIndexPattern(const std::vector<IndexerType>& types);
absl::Status ValidateIndexPattern(const std::vector<IndexerType>& types, int32_t num_layers);

}  // namespace indexcache
