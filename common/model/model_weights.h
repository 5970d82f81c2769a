// The weights of a glm_moe_dsa model on a backend, rearranged at load into the layouts the forward
// pass wants (so no op needs a transpose or a strided head split at run time):
//   q_b_proj rows are regrouped as [all heads' nope rows | all heads' rope rows], so the q output
//     splits into a per-head-contiguous nope block and rope block;
//   kv_b_proj is split into the absorbed MLA factors: w_uk_t [H·kv_lora, nope] (W_UKᵀ per head, turns
//     q_nope into latent space) and w_uv [H·v, kv_lora] (latent → value per head);
//   gate/up projections are stacked into one [2I, hidden] matrix (gate rows first);
//   the indexer's weights_proj is pre-multiplied by index_n_heads^-0.5, as transformers applies it;
//   projections that read the same input are stacked into one matrix, so each input is read by one
//   product (decode runs ~30 small kernels per layer: a product fewer is a launch and a pass fewer):
//     from the normed hidden state: q_a_proj | kv_a_proj_with_mqa | indexer wk | indexer weights_proj,
//     from the normed q latent:     q_b_proj (regrouped) | indexer wq_b.
// A sharded rank (ModelLoadOptions::shard) loads its heads, intermediate columns and experts only.
// Shared layers load no indexer weights (their checkpoints may not have them): their stacks stop
// after the MLA rows — unless ModelLoadOptions::shared_indexers asks for those a checkpoint has (reuse
// telemetry runs them on sampled passes); such a layer still runs Shared, on the MLA rows alone.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/model/model_config.h"
#include "common/model/model_shard.h"

namespace indexcache {

class WeightStore;

struct FeedForwardWeights {
  Tensor gate_up;  // [2I, hidden]
  Tensor down;     // [hidden, I]
};

struct LayerWeights {
  Tensor input_norm;      // [1, hidden]
  Tensor post_attn_norm;  // [1, hidden]

  // [q_lora + kv_lora + rope (+ ID + IH on Full layers), hidden]: q_a | kv_a | index wk | index
  // weights_proj × IH^-0.5 — every projection of the normed hidden state.
  Tensor hidden_proj;
  // [H·(nope + rope) (+ IH·ID on Full layers), q_lora]: q_b regrouped | index wq_b.
  Tensor q_latent_proj;
  Tensor q_a_norm;  // [1, q_lora]
  Tensor kv_a_norm; // [1, kv_lora]
  Tensor w_uk_t;    // [H·kv_lora, nope]
  Tensor w_uv;      // [H·v, kv_lora]
  Tensor o_proj;    // [hidden, H·v]

  // Lightning indexer's key norm (its projections are in the stacks above); empty without an indexer.
  Tensor index_k_norm_w;    // [1, ID]
  Tensor index_k_norm_b;    // [1, ID]
  bool has_indexer = false;  // every Full layer; a Shared layer only when loaded with shared_indexers

  bool is_moe = false;
  FeedForwardWeights dense;   // dense layers
  Tensor router;              // [E, hidden]
  Tensor router_bias;         // [1, E] e_score_correction_bias
  Tensor experts_gate_up;     // [E·2I, hidden], E = num_experts (this rank's)
  Tensor experts_down;        // [E·hidden, I]
  int32_t first_expert = 0;   // the routed experts held: [first_expert, first_expert + num_experts)
  int32_t num_experts = 0;
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

struct ModelLoadOptions {
  // Also load the indexer of every Shared layer whose checkpoint has one (LayerWeights::has_indexer).
  bool shared_indexers = false;
  // This rank's part of a sharded model (model_shard.h): only its heads, intermediate columns and
  // experts are loaded, so w_uk_t, w_uv, o_proj, q_latent_proj's q rows, the MLPs and the experts hold
  // this rank's share of the shapes above.
  ModelShard shard;
};

// Reads every tensor the config needs from `store`, checks its shape, converts and uploads it.
// Errors name the tensor and the layer.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const ModelConfig& config, const WeightStore& store,
                                                                Backend* backend, const ModelLoadOptions& options = {});

}  // namespace indexcache
