// An independent, deliberately naive float64 reference of transformers 5.17's GlmMoeDsaForCausalLM
// forward pass over one whole sequence, for the engine's invariant tests. It shares nothing with the
// engine's math (no Backend, no DsaModel, no absorbed MLA): it is written straight from the
// transformers code in its EXPANDED form — per-head k_nope/v from kv_b_proj, the full [T, T] indexer
// score matrix, top-k over the causal keys, softmax over the selected keys, a loop per routed expert.
// Only the config parser (LoadModelConfig) and the tensor reader (WeightStore::ReadF32) are shared.
//
// Header-only (inline) so any test can include it without a build-system change. Slow: use tiny models.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/model/model_config.h"
#include "common/safetensors/weight_store.h"
#include "common/util/status_macros.h"

namespace indexcache::reference {

struct NaiveDsaOptions {
  // Per-layer Full/Shared pattern; empty: the checkpoint's own. A Full layer needs indexer weights.
  std::vector<IndexerType> indexer_types;
  // > 0: replaces config.index_topk (e.g. >= T to make DSA select every causal key).
  int32_t index_topk = 0;
  // Dense MLA: no indexer at all, every query attends to all its causal keys.
  bool dense_attention = false;
  // A top-k row (or a routing decision) is a near-tie when the last kept and the first dropped
  // candidate score within this relative gap: float32 engines may legitimately pick either.
  double tie_tolerance = 1e-6;
};

struct NaiveLayerTrace {
  IndexerType type = IndexerType::kFull;
  int32_t source_layer = 0;                 // the Full layer whose selection this layer uses
  std::vector<std::set<int32_t>> selected;  // [T] key positions query t attends to (all causal when dense)
  std::vector<std::vector<double>> scores;  // Full layers: [T][t + 1] indexer scores I[t, s]; else empty
  std::vector<bool> near_tie;               // [T] the selection boundary of row t is a near-tie
  int32_t num_near_ties() const { return static_cast<int32_t>(std::count(near_tie.begin(), near_tie.end(), true)); }
};

struct NaiveDsaResult {
  int32_t seq_len = 0;
  int32_t vocab_size = 0;
  std::vector<double> logits;           // [T, vocab]
  std::vector<NaiveLayerTrace> layers;  // one per layer
  int32_t moe_near_ties = 0;            // routing decisions (group or expert boundary) that are near-ties
  const double* row(int32_t t) const { return logits.data() + static_cast<size_t>(t) * vocab_size; }
  // The first query row whose selection is a near-tie in any layer (T when none).
  int32_t first_near_tie_row() const {
    int32_t first = seq_len;
    for (const NaiveLayerTrace& l : layers) {
      for (int32_t t = 0; t < first; ++t) {
        if (l.near_tie[t]) first = t;
      }
    }
    return first;
  }
};

namespace naive_internal {

using Mat = std::vector<double>;  // row-major

// y[T, out] = x[T, in] · W[out, in]ᵀ
inline Mat Linear(const Mat& x, const Mat& w, int64_t in, int64_t out) {
  const int64_t rows = static_cast<int64_t>(x.size()) / in;
  Mat y(rows * out, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * w[o * in + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

// weight ⊙ x / sqrt(mean(x²) + eps), per row of width `dim`.
inline Mat RmsNorm(const Mat& x, const Mat& weight, int64_t dim, double eps) {
  Mat y(x.size());
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double ms = 0.0;
    for (int64_t i = 0; i < dim; ++i) ms += x[r * dim + i] * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ms / dim + eps);
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = weight[i] * x[r * dim + i] * inv;
  }
  return y;
}

// nn.LayerNorm: (x - mean) / sqrt(var + eps) ⊙ weight + bias, per row.
inline Mat LayerNorm(const Mat& x, const Mat& weight, const Mat& bias, int64_t dim, double eps) {
  Mat y(x.size());
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < dim; ++i) mean += x[r * dim + i];
    mean /= dim;
    for (int64_t i = 0; i < dim; ++i) var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
    const double inv = 1.0 / std::sqrt(var / dim + eps);
    for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = (x[r * dim + i] - mean) * inv * weight[i] + bias[i];
  }
  return y;
}

// transformers' apply_rotary_pos_emb_interleave on the `dim` values at v[0..dim): pairs (v[2i], v[2i+1])
// rotate by pos · theta^(-2i/dim); the result is written de-interleaved (rotated evens, then odds).
inline void RopeInterleaved(double* v, int64_t dim, int64_t pos, double theta) {
  const int64_t half = dim / 2;
  std::vector<double> out(dim);
  for (int64_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(pos) * std::pow(theta, -2.0 * i / dim);
    const double c = std::cos(angle), s = std::sin(angle);
    out[i] = v[2 * i] * c - v[2 * i + 1] * s;
    out[half + i] = v[2 * i + 1] * c + v[2 * i] * s;
  }
  std::copy(out.begin(), out.end(), v);
}

inline double Silu(double x) { return x / (1.0 + std::exp(-x)); }

// down(silu(gate(x)) · up(x)) for the rows of x.
inline Mat SwiGlu(const Mat& x, const Mat& gate, const Mat& up, const Mat& down, int64_t hidden, int64_t inter) {
  Mat g = Linear(x, gate, hidden, inter);
  const Mat u = Linear(x, up, hidden, inter);
  for (size_t i = 0; i < g.size(); ++i) g[i] = Silu(g[i]) * u[i];
  return Linear(g, down, inter, hidden);
}

// Indices of `values` sorted by descending value (ties: lower index first).
inline std::vector<int32_t> ArgsortDescending(const std::vector<double>& values) {
  std::vector<int32_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return values[a] > values[b]; });
  return order;
}

// Whether keeping the first `k` of `order` (over `values`) is a near-tie decision.
inline bool IsNearTie(const std::vector<double>& values, const std::vector<int32_t>& order, size_t k, double tol) {
  if (k == 0 || k >= order.size()) return false;
  const double kept = values[order[k - 1]], dropped = values[order[k]];
  if (!std::isfinite(dropped)) return false;
  return std::abs(kept - dropped) <= tol * std::max({std::abs(kept), std::abs(dropped), 1e-30});
}

}  // namespace naive_internal

class NaiveDsa {
 public:
  // Reads config.json and every weight (converted to double) of `model_dir`. Routed experts must be in
  // the hub layout (experts.{e}.{gate,up,down}_proj.weight), as save_pretrained writes them.
  static absl::StatusOr<NaiveDsa> Load(const std::string& model_dir) {
    NaiveDsa m;
    absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
    if (!config.ok()) return config.status();
    m.config_ = *std::move(config);
    absl::StatusOr<WeightStore> store = WeightStore::Open(model_dir);
    if (!store.ok()) return store.status();
    const ModelConfig& c = m.config_;
    const int64_t hid = c.hidden_size, heads = c.num_heads, vocab = c.vocab_size;
    std::vector<std::pair<std::string, std::vector<int64_t>>> wanted = {
        {"model.embed_tokens.weight", {vocab, hid}}, {"model.norm.weight", {hid}}};
    if (!c.tie_word_embeddings) wanted.push_back({"lm_head.weight", {vocab, hid}});
    for (int32_t l = 0; l < c.num_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      const std::string a = p + "self_attn.";
      wanted.insert(wanted.end(), {
          {p + "input_layernorm.weight", {hid}},
          {p + "post_attention_layernorm.weight", {hid}},
          {a + "q_a_proj.weight", {c.q_lora_rank, hid}},
          {a + "q_a_layernorm.weight", {c.q_lora_rank}},
          {a + "q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank}},
          {a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, hid}},
          {a + "kv_a_layernorm.weight", {c.kv_lora_rank}},
          {a + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}},
          {a + "o_proj.weight", {hid, heads * c.v_head_dim}}});
      if (store->Contains(a + "indexer.wk.weight")) {
        const int64_t ih = c.index_n_heads, id = c.index_head_dim;
        wanted.insert(wanted.end(), {{a + "indexer.wq_b.weight", {ih * id, c.q_lora_rank}},
                                     {a + "indexer.wk.weight", {id, hid}},
                                     {a + "indexer.k_norm.weight", {id}},
                                     {a + "indexer.k_norm.bias", {id}},
                                     {a + "indexer.weights_proj.weight", {ih, hid}}});
      }
      const std::string f = p + "mlp.";
      if (c.mlp_types[l] == MlpType::kDense) {
        AddSwiGlu(wanted, f, c.intermediate_size, hid);
        continue;
      }
      wanted.insert(wanted.end(), {{f + "gate.weight", {c.n_routed_experts, hid}},
                                   {f + "gate.e_score_correction_bias", {c.n_routed_experts}}});
      for (int32_t e = 0; e < c.n_routed_experts; ++e) {
        AddSwiGlu(wanted, absl::StrCat(f, "experts.", e, "."), c.moe_intermediate_size, hid);
      }
      if (c.n_shared_experts > 0) {
        AddSwiGlu(wanted, f + "shared_experts.", int64_t{c.moe_intermediate_size} * c.n_shared_experts, hid);
      }
    }
    for (const auto& [name, shape] : wanted) {
      absl::StatusOr<std::vector<float>> values = store->ReadF32(name, shape);
      if (!values.ok()) return values.status();
      m.weights_[name] = std::vector<double>(values->begin(), values->end());
    }
    return m;
  }

  const ModelConfig& config() const { return config_; }
  bool HasIndexer(int32_t layer) const {
    return weights_.contains(absl::StrCat("model.layers.", layer, ".self_attn.indexer.wk.weight"));
  }

  // The forward pass over `ids` (positions 0..T-1, no cache).
  absl::StatusOr<NaiveDsaResult> Forward(const std::vector<int32_t>& ids, const NaiveDsaOptions& options = {}) const {
    using namespace naive_internal;
    const ModelConfig& c = config_;
    const int64_t T = static_cast<int64_t>(ids.size()), hid = c.hidden_size;
    if (T == 0) return absl::InvalidArgumentError("naive DSA: empty input");
    for (int32_t id : ids) {
      if (id < 0 || id >= c.vocab_size) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " out of vocabulary"));
    }
    const std::vector<IndexerType> types = options.indexer_types.empty() ? c.indexer_types : options.indexer_types;
    if (static_cast<int32_t>(types.size()) != c.num_layers) {
      return absl::InvalidArgumentError("naive DSA: the pattern needs one entry per layer");
    }
    const int32_t topk = options.index_topk > 0 ? options.index_topk : c.index_topk;

    NaiveDsaResult result;
    result.seq_len = static_cast<int32_t>(T);
    result.vocab_size = c.vocab_size;
    Mat x(T * hid);
    const Mat& embed = W("model.embed_tokens.weight");
    for (int64_t t = 0; t < T; ++t) std::copy_n(&embed[ids[t] * hid], hid, &x[t * hid]);

    int32_t last_full = -1;
    for (int32_t l = 0; l < c.num_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      NaiveLayerTrace trace;
      trace.type = types[l];
      const Mat h = RmsNorm(x, W(p + "input_layernorm.weight"), hid, c.rms_norm_eps);
      // q_a_layernorm / kv_a_layernorm are GlmMoeDsaRMSNorm with its default eps 1e-6.
      const Mat qa = RmsNorm(Linear(h, W(p + "self_attn.q_a_proj.weight"), hid, c.q_lora_rank),
                             W(p + "self_attn.q_a_layernorm.weight"), c.q_lora_rank, 1e-6);
      if (options.dense_attention) {
        trace.source_layer = l;
        for (int64_t t = 0; t < T; ++t) {
          std::set<int32_t> all;
          for (int32_t s = 0; s <= t; ++s) all.insert(s);
          trace.selected.push_back(std::move(all));
        }
        trace.near_tie.assign(T, false);
      } else if (types[l] == IndexerType::kFull) {
        if (!HasIndexer(l)) {
          return absl::FailedPreconditionError(
              absl::StrCat("naive DSA: layer ", l, " is Full but the checkpoint has no indexer weights for it"));
        }
        last_full = l;
        trace.source_layer = l;
        RETURN_IF_ERROR(RunIndexer(l, h, qa, T, topk, options.tie_tolerance, trace));
      } else {
        if (last_full < 0) return absl::InvalidArgumentError("naive DSA: a Shared layer has no Full layer before it");
        const NaiveLayerTrace& src = result.layers[last_full];
        trace.source_layer = last_full;
        trace.selected = src.selected;
        trace.near_tie = src.near_tie;
      }
      const Mat attn = Attention(l, h, qa, T, trace.selected);
      for (size_t i = 0; i < x.size(); ++i) x[i] += attn[i];

      const Mat h2 = RmsNorm(x, W(p + "post_attention_layernorm.weight"), hid, c.rms_norm_eps);
      const Mat ff = c.mlp_types[l] == MlpType::kDense
                         ? SwiGlu(h2, W(p + "mlp.gate_proj.weight"), W(p + "mlp.up_proj.weight"),
                                  W(p + "mlp.down_proj.weight"), hid, c.intermediate_size)
                         : Moe(l, h2, options.tie_tolerance, result.moe_near_ties);
      for (size_t i = 0; i < x.size(); ++i) x[i] += ff[i];
      result.layers.push_back(std::move(trace));
    }
    const Mat final_h = RmsNorm(x, W("model.norm.weight"), hid, c.rms_norm_eps);
    const Mat& head = c.tie_word_embeddings ? W("model.embed_tokens.weight") : W("lm_head.weight");
    result.logits = Linear(final_h, head, hid, c.vocab_size);
    return result;
  }

 private:
  static void AddSwiGlu(std::vector<std::pair<std::string, std::vector<int64_t>>>& wanted, const std::string& p,
                        int64_t inter, int64_t hid) {
    wanted.insert(wanted.end(), {{p + "gate_proj.weight", {inter, hid}},
                                 {p + "up_proj.weight", {inter, hid}},
                                 {p + "down_proj.weight", {hid, inter}}});
  }

  const naive_internal::Mat& W(const std::string& name) const { return weights_.at(name); }

  // GlmMoeDsaIndexer: I[t, s] = Σ_h w[t, h] · ReLU(D^-1/2 · q[t, h]·k[s]), w = weights_proj(h) · H^-1/2;
  // the first qk_rope_head_dim dims of q and k are roped (interleaved), k is LayerNorm'ed first.
  absl::Status RunIndexer(int32_t l, const naive_internal::Mat& h, const naive_internal::Mat& qa, int64_t T,
                          int32_t topk, double tol, NaiveLayerTrace& trace) const {
    using namespace naive_internal;
    const ModelConfig& c = config_;
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.indexer.");
    const int64_t ih = c.index_n_heads, id = c.index_head_dim, hid = c.hidden_size;
    Mat q = Linear(qa, W(p + "wq_b.weight"), c.q_lora_rank, ih * id);
    Mat k = LayerNorm(Linear(h, W(p + "wk.weight"), hid, id), W(p + "k_norm.weight"), W(p + "k_norm.bias"), id, 1e-6);
    Mat w = Linear(h, W(p + "weights_proj.weight"), hid, ih);
    for (double& v : w) v /= std::sqrt(static_cast<double>(ih));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < ih; ++hh) RopeInterleaved(&q[(t * ih + hh) * id], c.qk_rope_head_dim, t, c.rope_theta);
      RopeInterleaved(&k[t * id], c.qk_rope_head_dim, t, c.rope_theta);
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(id));
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> row(t + 1, 0.0);
      for (int64_t s = 0; s <= t; ++s) {
        for (int64_t hh = 0; hh < ih; ++hh) {
          double dot = 0.0;
          for (int64_t d = 0; d < id; ++d) dot += q[(t * ih + hh) * id + d] * k[s * id + d];
          row[s] += w[t * ih + hh] * std::max(0.0, dot * scale);
        }
      }
      const std::vector<int32_t> order = ArgsortDescending(row);
      const size_t keep = std::min<size_t>(topk, row.size());
      trace.selected.emplace_back(order.begin(), order.begin() + keep);
      trace.near_tie.push_back(IsNearTie(row, order, keep, tol));
      trace.scores.push_back(std::move(row));
    }
    return absl::OkStatus();
  }

  // MLA in the expanded form: per head, key = [k_nope from kv_b_proj | shared roped k_rot], value from
  // kv_b_proj; softmax(scale · q·k) over `selected[t]` only; then o_proj. Returns [T, hidden].
  naive_internal::Mat Attention(int32_t l, const naive_internal::Mat& h, const naive_internal::Mat& qa, int64_t T,
                                const std::vector<std::set<int32_t>>& selected) const {
    using namespace naive_internal;
    const ModelConfig& c = config_;
    const std::string p = absl::StrCat("model.layers.", l, ".self_attn.");
    const int64_t heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim;
    const int64_t qkd = nope + rope, kvl = c.kv_lora_rank, hid = c.hidden_size;
    Mat q = Linear(qa, W(p + "q_b_proj.weight"), c.q_lora_rank, heads * qkd);  // [T, H, nope | rope]
    Mat ckv = Linear(h, W(p + "kv_a_proj_with_mqa.weight"), hid, kvl + rope);  // [T, kv_lora | rope]
    Mat latent(T * kvl), k_rot(T * rope);
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(&ckv[t * (kvl + rope)], kvl, &latent[t * kvl]);
      std::copy_n(&ckv[t * (kvl + rope) + kvl], rope, &k_rot[t * rope]);
      RopeInterleaved(&k_rot[t * rope], rope, t, c.rope_theta);
      for (int64_t hh = 0; hh < heads; ++hh) RopeInterleaved(&q[(t * heads + hh) * qkd + nope], rope, t, c.rope_theta);
    }
    latent = RmsNorm(latent, W(p + "kv_a_layernorm.weight"), kvl, 1e-6);
    const Mat kv = Linear(latent, W(p + "kv_b_proj.weight"), kvl, heads * (nope + vd));  // [T, H, nope | v]
    const double scale = 1.0 / std::sqrt(static_cast<double>(qkd));  // default RoPE: no mscale
    Mat out(T * heads * vd, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < heads; ++hh) {
        const double* qh = &q[(t * heads + hh) * qkd];
        std::vector<std::pair<int32_t, double>> logits;
        double max_logit = -std::numeric_limits<double>::infinity();
        for (int32_t s : selected[t]) {
          if (s > t) continue;  // the causal mask (never selected by a correct indexer anyway)
          const double* kh = &kv[(s * heads + hh) * (nope + vd)];
          double dot = 0.0;
          for (int64_t d = 0; d < nope; ++d) dot += qh[d] * kh[d];
          for (int64_t d = 0; d < rope; ++d) dot += qh[nope + d] * k_rot[s * rope + d];
          logits.push_back({s, dot * scale});
          max_logit = std::max(max_logit, dot * scale);
        }
        double denom = 0.0;
        for (auto& [s, v] : logits) denom += (v = std::exp(v - max_logit));
        for (const auto& [s, v] : logits) {
          const double* vh = &kv[(s * heads + hh) * (nope + vd) + nope];
          for (int64_t d = 0; d < vd; ++d) out[(t * heads + hh) * vd + d] += v / denom * vh[d];
        }
      }
    }
    return Linear(out, W(p + "o_proj.weight"), heads * vd, hid);
  }

  // GlmMoeDsaMoE: sigmoid router; choice scores = sigmoid + e_score_correction_bias; keep the
  // topk_group groups with the best sum of their top-2 choice scores, then the top experts among them;
  // weights = un-biased sigmoid of the picks, normalized (norm_topk_prob), × routed_scaling_factor;
  // plus the shared experts. Counts near-tie routing decisions into `near_ties`.
  naive_internal::Mat Moe(int32_t l, const naive_internal::Mat& h, double tol, int32_t& near_ties) const {
    using namespace naive_internal;
    const ModelConfig& c = config_;
    const std::string p = absl::StrCat("model.layers.", l, ".mlp.");
    const int64_t hid = c.hidden_size, E = c.n_routed_experts, T = static_cast<int64_t>(h.size()) / hid;
    const int64_t groups = c.n_group, per_group = E / groups, inter = c.moe_intermediate_size;
    const Mat router = Linear(h, W(p + "gate.weight"), hid, E);
    const Mat& bias = W(p + "gate.e_score_correction_bias");
    Mat out(T * hid, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> sig(E), choice(E);
      for (int64_t e = 0; e < E; ++e) {
        sig[e] = 1.0 / (1.0 + std::exp(-router[t * E + e]));
        choice[e] = sig[e] + bias[e];
      }
      std::vector<double> group_score(groups);
      for (int64_t g = 0; g < groups; ++g) {
        std::vector<double> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(members.rbegin(), members.rend());
        group_score[g] = members[0] + (per_group > 1 ? members[1] : 0.0);
      }
      const std::vector<int32_t> group_order = ArgsortDescending(group_score);
      near_ties += IsNearTie(group_score, group_order, c.topk_group, tol);
      std::vector<double> masked(E, -std::numeric_limits<double>::infinity());
      for (int64_t i = 0; i < c.topk_group; ++i) {
        const int64_t g = group_order[i];
        std::copy(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group, masked.begin() + g * per_group);
      }
      const std::vector<int32_t> expert_order = ArgsortDescending(masked);
      near_ties += IsNearTie(masked, expert_order, c.num_experts_per_tok, tol);
      double sum = 0.0;
      for (int64_t k = 0; k < c.num_experts_per_tok; ++k) sum += sig[expert_order[k]];
      const Mat row(h.begin() + t * hid, h.begin() + (t + 1) * hid);
      for (int64_t k = 0; k < c.num_experts_per_tok; ++k) {
        const int32_t e = expert_order[k];
        double weight = sig[e];
        if (c.norm_topk_prob) weight /= sum + 1e-20;
        weight *= c.routed_scaling_factor;
        const std::string ep = absl::StrCat(p, "experts.", e, ".");
        const Mat y = SwiGlu(row, W(ep + "gate_proj.weight"), W(ep + "up_proj.weight"), W(ep + "down_proj.weight"),
                             hid, inter);
        for (int64_t i = 0; i < hid; ++i) out[t * hid + i] += weight * y[i];
      }
    }
    if (c.n_shared_experts > 0) {
      const Mat shared = SwiGlu(h, W(p + "shared_experts.gate_proj.weight"), W(p + "shared_experts.up_proj.weight"),
                                W(p + "shared_experts.down_proj.weight"), hid,
                                int64_t{inter} * c.n_shared_experts);
      for (size_t i = 0; i < out.size(); ++i) out[i] += shared[i];
    }
    return out;
  }

  ModelConfig config_;
  absl::flat_hash_map<std::string, naive_internal::Mat> weights_;
};

}  // namespace indexcache::reference
