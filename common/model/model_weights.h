// The weights of a glm_moe_dsa model on a backend, rearranged at load into the layouts the forward
// pass wants (so no op needs a transpose or a strided head split at run time):
//   q_b_proj rows are regrouped as [all heads' nope rows | all heads' rope rows], so the q output
//     splits into a per-head-contiguous nope block and rope block;
//   kv_b_proj is split into the absorbed MLA factors: w_uk_t [H·kv_lora, nope] (W_UKᵀ per head, turns
//     q_nope into latent space) and w_uv [H·v, kv_lora] (latent → value per head);
//   gate/up projections are stacked into one [2I, hidden] matrix (gate rows first);
//   the indexer's weights_proj is pre-multiplied by index_n_heads^-0.5, as transformers applies it.
// Shared layers load no indexer weights (their checkpoints may not have them).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/model/model_config.h"

namespace indexcache {

class WeightStore;

struct FeedForwardWeights {
  Tensor gate_up;  // [2I, hidden]
  Tensor down;     // [hidden, I]
};

struct LayerWeights {
  Tensor input_norm;      // [1, hidden]
  Tensor post_attn_norm;  // [1, hidden]

  Tensor q_a_proj;  // [q_lora, hidden]
  Tensor q_a_norm;  // [1, q_lora]
  Tensor q_b_proj;  // [H·(nope + rope), q_lora], regrouped (see above)
  Tensor kv_a_proj; // [kv_lora + rope, hidden]
  Tensor kv_a_norm; // [1, kv_lora]
  Tensor w_uk_t;    // [H·kv_lora, nope]
  Tensor w_uv;      // [H·v, kv_lora]
  Tensor o_proj;    // [hidden, H·v]

  // Lightning indexer; empty on Shared layers.
  Tensor index_wq_b;        // [IH·ID, q_lora]
  Tensor index_wk;          // [ID, hidden]
  Tensor index_k_norm_w;    // [1, ID]
  Tensor index_k_norm_b;    // [1, ID]
  Tensor index_head_proj;   // [IH, hidden], × IH^-0.5

  bool is_moe = false;
  FeedForwardWeights dense;   // dense layers
  Tensor router;              // [E, hidden]
  Tensor router_bias;         // [1, E] e_score_correction_bias
  Tensor experts_gate_up;     // [E·2I, hidden]
  Tensor experts_down;        // [E·hidden, I]
  FeedForwardWeights shared;  // shared experts (n_shared · moe_intermediate wide); empty if none
};

struct ModelWeights {
  Tensor embed_tokens;  // [vocab, hidden]
  Tensor final_norm;    // [1, hidden]
  Tensor lm_head;       // [vocab, hidden] (the embedding when tied)
  std::vector<LayerWeights> layers;
  std::vector<Buffer> storage;  // owns every tensor above
  size_t num_parameters = 0;
};

// Reads every tensor the config needs from `store`, checks its shape, converts and uploads it.
// Errors name the tensor and the layer.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const ModelConfig& config, const WeightStore& store,
                                                                Backend* backend);

}  // namespace indexcache
