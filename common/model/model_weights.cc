#include "common/model/model_weights.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/safetensors/weight_store.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// Loads tensors into backend buffers, keeping ownership in ModelWeights::storage.
class Loader {
 public:
  Loader(const WeightStore& store, Backend* backend, ModelWeights* weights)
      : store_(store), backend_(backend), weights_(weights) {}

  absl::StatusOr<std::vector<float>> Read(const std::string& name, std::vector<int64_t> shape) {
    return store_.ReadF32(name, shape);
  }

  // Uploads `host` as a [rows, cols] tensor.
  absl::StatusOr<Tensor> Upload(const std::vector<float>& host, int64_t rows, int64_t cols) {
    ASSIGN_OR_RETURN(Buffer buffer, backend_->Allocate(rows * cols * DTypeSize(backend_->weight_dtype())));
    Tensor t = buffer.View(backend_->weight_dtype(), rows, cols);
    backend_->Upload(host.data(), t);
    weights_->storage.push_back(std::move(buffer));
    weights_->num_parameters += rows * cols;
    return t;
  }

  // A tensor as stored: matrices keep their [out, in] shape, vectors become [1, n].
  absl::StatusOr<Tensor> Load(const std::string& name, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(std::vector<float> host, Read(name, shape));
    const int64_t rows = shape.size() == 1 ? 1 : shape[0];
    return Upload(host, rows, shape.back());
  }

  // gate [I, hidden] and up [I, hidden] stacked into [2I, hidden].
  absl::StatusOr<std::vector<float>> ReadGateUp(const std::string& prefix, int64_t inter, int64_t hidden) {
    ASSIGN_OR_RETURN(std::vector<float> gate, Read(prefix + "gate_proj.weight", {inter, hidden}));
    ASSIGN_OR_RETURN(std::vector<float> up, Read(prefix + "up_proj.weight", {inter, hidden}));
    gate.insert(gate.end(), up.begin(), up.end());
    return gate;
  }

  // A SwiGLU MLP of `inter` intermediate columns; `[i0, i1)`: the columns this rank keeps (tensor
  // parallel: its gate and up rows, its down columns).
  absl::StatusOr<FeedForwardWeights> LoadMlp(const std::string& prefix, int64_t inter, int64_t hidden, int64_t i0,
                                             int64_t i1) {
    FeedForwardWeights mlp;
    ASSIGN_OR_RETURN(std::vector<float> gate_up, ReadGateUp(prefix, inter, hidden));
    const int64_t local = i1 - i0;
    std::vector<float> kept(2 * local * hidden);
    std::copy_n(&gate_up[i0 * hidden], local * hidden, kept.begin());                        // gate rows
    std::copy_n(&gate_up[(inter + i0) * hidden], local * hidden, kept.begin() + local * hidden);  // up rows
    ASSIGN_OR_RETURN(mlp.gate_up, Upload(kept, 2 * local, hidden));
    ASSIGN_OR_RETURN(std::vector<float> down, Read(prefix + "down_proj.weight", {hidden, inter}));
    ASSIGN_OR_RETURN(mlp.down, Upload(Columns(down, hidden, inter, i0, i1), hidden, local));
    return mlp;
  }

  // Columns [c0, c1) of a [rows, cols] matrix.
  static std::vector<float> Columns(const std::vector<float>& m, int64_t rows, int64_t cols, int64_t c0, int64_t c1) {
    if (c0 == 0 && c1 == cols) return m;
    std::vector<float> out(rows * (c1 - c0));
    for (int64_t r = 0; r < rows; ++r) std::copy(&m[r * cols + c0], &m[r * cols + c1], &out[r * (c1 - c0)]);
    return out;
  }

  const WeightStore& store() const { return store_; }

 private:
  const WeightStore& store_;
  Backend* backend_;
  ModelWeights* weights_;
};

// `full`: the layer runs its indexer, whose weights must be there; `optional_indexer`: load them too
// when the checkpoint has them.
// `[h0, h1)`: the heads this rank keeps (all of them unless tensor parallel).
absl::Status LoadAttention(const ModelConfig& c, const std::string& p, bool full, bool optional_indexer, int64_t h0,
                           int64_t h1, Loader& loader, LayerWeights& w) {
  const int64_t hidden = c.hidden_size, heads = c.num_heads, nope = c.qk_nope_head_dim, local = h1 - h0;
  const int64_t rope = c.qk_rope_head_dim, v = c.v_head_dim, kvl = c.kv_lora_rank, qkd = c.qk_head_dim();
  ASSIGN_OR_RETURN(std::vector<float> hidden_proj, loader.Read(p + "q_a_proj.weight", {c.q_lora_rank, hidden}));
  ASSIGN_OR_RETURN(std::vector<float> kv_a, loader.Read(p + "kv_a_proj_with_mqa.weight", {kvl + rope, hidden}));
  hidden_proj.insert(hidden_proj.end(), kv_a.begin(), kv_a.end());
  ASSIGN_OR_RETURN(w.q_a_norm, loader.Load(p + "q_a_layernorm.weight", {c.q_lora_rank}));
  ASSIGN_OR_RETURN(w.kv_a_norm, loader.Load(p + "kv_a_layernorm.weight", {kvl}));
  // o_proj: [hidden, H·v]; a rank's heads read its columns.
  ASSIGN_OR_RETURN(std::vector<float> o_proj, loader.Read(p + "o_proj.weight", {hidden, heads * v}));
  ASSIGN_OR_RETURN(w.o_proj, loader.Upload(Loader::Columns(o_proj, hidden, heads * v, h0 * v, h1 * v), hidden, local * v));

  ASSIGN_OR_RETURN(std::vector<float> q_b, loader.Read(p + "q_b_proj.weight", {heads * qkd, c.q_lora_rank}));
  std::vector<float> q_latent_proj(local * qkd * c.q_lora_rank);
  const int64_t row = c.q_lora_rank;
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t d = 0; d < qkd; ++d) {
      const int64_t dst = d < nope ? (h - h0) * nope + d : local * nope + (h - h0) * rope + (d - nope);
      std::copy_n(&q_b[(h * qkd + d) * row], row, &q_latent_proj[dst * row]);
    }
  }

  // kv_b_proj: [H·(nope + v), kv_lora]; per head the first `nope` rows are W_UK, the next `v` W_UV.
  ASSIGN_OR_RETURN(std::vector<float> kv_b, loader.Read(p + "kv_b_proj.weight", {heads * (nope + v), kvl}));
  std::vector<float> uk_t(local * kvl * nope), uv(local * v * kvl);
  for (int64_t h = h0; h < h1; ++h) {
    const float* head = &kv_b[h * (nope + v) * kvl];
    for (int64_t d = 0; d < nope; ++d) {
      for (int64_t l = 0; l < kvl; ++l) uk_t[((h - h0) * kvl + l) * nope + d] = head[d * kvl + l];
    }
    std::copy_n(head + nope * kvl, v * kvl, &uv[(h - h0) * v * kvl]);
  }
  ASSIGN_OR_RETURN(w.w_uk_t, loader.Upload(uk_t, local * kvl, nope));
  ASSIGN_OR_RETURN(w.w_uv, loader.Upload(uv, local * v, kvl));

  // The stacks end here on layers without an indexer; the others append the indexer's projections.
  auto upload_stacks = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(w.hidden_proj, loader.Upload(hidden_proj, hidden_proj.size() / hidden, hidden));
    ASSIGN_OR_RETURN(w.q_latent_proj, loader.Upload(q_latent_proj, q_latent_proj.size() / row, row));
    return absl::OkStatus();
  };
  const std::string ip = p + "indexer.";
  const bool stored = loader.store().Contains(ip + "wk.weight");
  if (full && !stored) {
    return absl::NotFoundError(
        "this layer is Full but the checkpoint has no indexer weights for it (it was saved as a Shared "
        "layer; choose a pattern that keeps it Shared)");
  }
  if (!full && !(optional_indexer && stored)) return upload_stacks();
  w.has_indexer = true;
  const int64_t ih = c.index_n_heads, id = c.index_head_dim;
  ASSIGN_OR_RETURN(std::vector<float> wq_b, loader.Read(ip + "wq_b.weight", {ih * id, c.q_lora_rank}));
  q_latent_proj.insert(q_latent_proj.end(), wq_b.begin(), wq_b.end());
  ASSIGN_OR_RETURN(std::vector<float> wk, loader.Read(ip + "wk.weight", {id, hidden}));
  hidden_proj.insert(hidden_proj.end(), wk.begin(), wk.end());
  ASSIGN_OR_RETURN(std::vector<float> head_proj, loader.Read(ip + "weights_proj.weight", {ih, hidden}));
  const float head_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ih)));
  for (float& x : head_proj) x *= head_scale;
  hidden_proj.insert(hidden_proj.end(), head_proj.begin(), head_proj.end());
  ASSIGN_OR_RETURN(w.index_k_norm_w, loader.Load(ip + "k_norm.weight", {id}));
  ASSIGN_OR_RETURN(w.index_k_norm_b, loader.Load(ip + "k_norm.bias", {id}));
  return upload_stacks();
}

// Routed experts come either fused (transformers' in-memory layout: experts.gate_up_proj [E, 2I, H],
// experts.down_proj [E, H, I]) or per expert (the hub layout: experts.{e}.{gate,up,down}_proj.weight).
// `[e0, e1)`: the experts this rank keeps (all of them unless expert parallel).
absl::Status LoadExperts(const ModelConfig& c, const std::string& p, int64_t e0, int64_t e1, Loader& loader,
                         LayerWeights& w) {
  const int64_t experts = c.n_routed_experts, inter = c.moe_intermediate_size, hidden = c.hidden_size;
  const int64_t local = e1 - e0;
  w.first_expert = static_cast<int32_t>(e0);
  w.num_experts = static_cast<int32_t>(local);
  if (loader.store().Contains(p + "experts.gate_up_proj")) {
    ASSIGN_OR_RETURN(std::vector<float> gate_up, loader.Read(p + "experts.gate_up_proj", {experts, 2 * inter, hidden}));
    const int64_t gu = 2 * inter * hidden, d = hidden * inter;  // values per expert
    ASSIGN_OR_RETURN(w.experts_gate_up,
                     loader.Upload(std::vector<float>(gate_up.begin() + e0 * gu, gate_up.begin() + e1 * gu),
                                   local * 2 * inter, hidden));
    ASSIGN_OR_RETURN(std::vector<float> down, loader.Read(p + "experts.down_proj", {experts, hidden, inter}));
    ASSIGN_OR_RETURN(w.experts_down, loader.Upload(std::vector<float>(down.begin() + e0 * d, down.begin() + e1 * d),
                                                   local * hidden, inter));
    return absl::OkStatus();
  }
  std::vector<float> gate_up, down;
  gate_up.reserve(local * 2 * inter * hidden);
  down.reserve(local * hidden * inter);
  for (int64_t e = e0; e < e1; ++e) {
    const std::string ep = absl::StrCat(p, "experts.", e, ".");
    ASSIGN_OR_RETURN(std::vector<float> gu, loader.ReadGateUp(ep, inter, hidden));
    gate_up.insert(gate_up.end(), gu.begin(), gu.end());
    ASSIGN_OR_RETURN(std::vector<float> d, loader.Read(ep + "down_proj.weight", {hidden, inter}));
    down.insert(down.end(), d.begin(), d.end());
  }
  ASSIGN_OR_RETURN(w.experts_gate_up, loader.Upload(gate_up, local * 2 * inter, hidden));
  ASSIGN_OR_RETURN(w.experts_down, loader.Upload(down, local * hidden, inter));
  return absl::OkStatus();
}

absl::Status LoadFeedForward(const ModelConfig& c, const std::string& p, MlpType type, const ModelShard& shard,
                             Loader& loader, LayerWeights& w) {
  const int64_t hidden = c.hidden_size;
  // This rank's share of `total` when `split`, else all of it.
  auto part = [&](bool split, int64_t total) { return split ? shard.Range(total) : std::pair<int64_t, int64_t>{0, total}; };
  if (type == MlpType::kDense) {
    const auto [i0, i1] = part(shard.tensor_parallel, c.intermediate_size);
    ASSIGN_OR_RETURN(w.dense, loader.LoadMlp(p, c.intermediate_size, hidden, i0, i1));
    return absl::OkStatus();
  }
  w.is_moe = true;
  ASSIGN_OR_RETURN(w.router, loader.Load(p + "gate.weight", {c.n_routed_experts, hidden}));
  ASSIGN_OR_RETURN(w.router_bias, loader.Load(p + "gate.e_score_correction_bias", {c.n_routed_experts}));
  const auto [e0, e1] = part(shard.expert_parallel, c.n_routed_experts);
  RETURN_IF_ERROR(LoadExperts(c, p, e0, e1, loader, w));
  if (c.n_shared_experts > 0) {
    const int64_t inter = int64_t{c.moe_intermediate_size} * c.n_shared_experts;
    const auto [i0, i1] = part(shard.tensor_parallel, inter);
    ASSIGN_OR_RETURN(w.shared, loader.LoadMlp(p + "shared_experts.", inter, hidden, i0, i1));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModelWeights(const ModelConfig& c, const WeightStore& store,
                                                                Backend* backend, const ModelLoadOptions& options) {
  RETURN_IF_ERROR(ValidateShard(c, options.shard));
  auto weights = std::make_unique<ModelWeights>();
  Loader loader(store, backend, weights.get());
  const auto [h0, h1] =
      options.shard.tensor_parallel ? options.shard.Range(c.num_heads) : std::pair<int64_t, int64_t>{0, c.num_heads};
  const int64_t hidden = c.hidden_size;
  ASSIGN_OR_RETURN(weights->embed_tokens, loader.Load("model.embed_tokens.weight", {c.vocab_size, hidden}));
  ASSIGN_OR_RETURN(weights->final_norm, loader.Load("model.norm.weight", {hidden}));
  if (c.tie_word_embeddings) {
    weights->lm_head = weights->embed_tokens;
  } else {
    ASSIGN_OR_RETURN(weights->lm_head, loader.Load("lm_head.weight", {c.vocab_size, hidden}));
  }
  weights->layers.resize(c.num_layers);
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& w = weights->layers[i];
    absl::Status status = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(w.input_norm, loader.Load(p + "input_layernorm.weight", {hidden}));
      ASSIGN_OR_RETURN(w.post_attn_norm, loader.Load(p + "post_attention_layernorm.weight", {hidden}));
      RETURN_IF_ERROR(LoadAttention(c, p + "self_attn.", c.indexer_types[i] == IndexerType::kFull,
                                    options.shared_indexers, h0, h1, loader, w));
      return LoadFeedForward(c, p + "mlp.", c.mlp_types[i], options.shard, loader, w);
    }();
    if (!status.ok()) return Annotate(status, absl::StrCat("loading layer ", i));
  }
  return weights;
}

}  // namespace indexcache
