#include "bench/forward_cost.h"

#include <algorithm>
#include <cmath>

namespace indexcache::bench {
namespace {

constexpr double kF32 = 4.0;

// Parameters of the MLA projections of one layer (also their multiply-adds per token).
double ProjectionParams(const ModelConfig& c) {
  const double h = c.hidden_size, qr = c.q_lora_rank, kvr = c.kv_lora_rank, nh = c.num_heads;
  const double dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  return h * qr + qr * nh * (dn + dr) + h * (kvr + dr) + nh * dn * kvr + nh * kvr * dv + nh * dv * h;
}

// Parameters of the indexer's projections (also their multiply-adds per token).
double IndexerParams(const ModelConfig& c) {
  const double ih = c.index_n_heads, id = c.index_head_dim;
  return c.q_lora_rank * ih * id + c.hidden_size * id + c.hidden_size * ih;
}

double ExpertParams(const ModelConfig& c) { return 3.0 * c.hidden_size * c.moe_intermediate_size; }

// Expected distinct experts hit when `tokens` tokens each pick K of E uniformly (random weights route
// close to uniformly): E·(1 − (1 − K/E)^tokens).
double DistinctExperts(const ModelConfig& c, int64_t tokens) {
  const double e = c.n_routed_experts;
  if (e <= 0) return 0.0;
  return e * (1.0 - std::pow(1.0 - c.num_experts_per_tok / e, static_cast<double>(tokens)));
}

}  // namespace

ForwardCost& ForwardCost::operator+=(const ForwardCost& o) {
  projection_flops += o.projection_flops;
  indexer_flops += o.indexer_flops;
  attention_flops += o.attention_flops;
  ffn_flops += o.ffn_flops;
  lm_head_flops += o.lm_head_flops;
  weight_bytes += o.weight_bytes;
  cache_bytes += o.cache_bytes;
  return *this;
}

void ForwardCost::Scale(double f) {
  projection_flops *= f;
  indexer_flops *= f;
  attention_flops *= f;
  ffn_flops *= f;
  lm_head_flops *= f;
  weight_bytes *= f;
  cache_bytes *= f;
}

ForwardCost CostOfPass(const ModelConfig& c, const std::vector<std::vector<int32_t>>& sequences, int64_t logit_rows) {
  const double h = c.hidden_size, kvr = c.kv_lora_rank, nh = c.num_heads, dr = c.qk_rope_head_dim;
  const double ih = c.index_n_heads, id = c.index_head_dim;
  const double latent_row = kvr + dr;
  // Per-pass sums over tokens: n, Σ(p+1) (keys an indexer run scores), Σ min(k, p+1) (keys attended).
  int64_t n = 0;
  double visible = 0.0, attended = 0.0;
  double index_key_reads = 0.0, latent_reads = 0.0;  // rows, per layer
  for (const auto& positions : sequences) {
    if (positions.empty()) continue;
    double seq_attended = 0.0;
    for (int32_t p : positions) {
      visible += p + 1.0;
      seq_attended += std::min<double>(c.index_topk, p + 1.0);
    }
    n += static_cast<int64_t>(positions.size());
    attended += seq_attended;
    const double context = positions.back() + 1.0;
    index_key_reads += context;  // a sequence's index keys are gathered once per pass
    latent_reads += std::min(context, seq_attended);
  }

  ForwardCost cost;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const bool full = c.indexer_types[l] == IndexerType::kFull;
    cost.projection_flops += 2.0 * n * ProjectionParams(c);
    cost.weight_bytes += kF32 * (ProjectionParams(c) + 2.0 * h + c.q_lora_rank + kvr);  // + 4 norms
    cost.attention_flops += attended * nh * (2.0 * latent_row + 2.0 * kvr);
    cost.cache_bytes += kF32 * (n * latent_row + latent_reads * latent_row);
    if (full) {
      cost.indexer_flops += 2.0 * n * IndexerParams(c) + visible * (2.0 * ih * id + 3.0 * ih);
      cost.weight_bytes += kF32 * (IndexerParams(c) + 2.0 * id);  // + k_norm weight and bias
      cost.cache_bytes += kF32 * (n * id + index_key_reads * id);
    }
    if (c.mlp_types[l] == MlpType::kDense) {
      cost.ffn_flops += 2.0 * n * 3.0 * h * c.intermediate_size;
      cost.weight_bytes += kF32 * 3.0 * h * c.intermediate_size;
    } else {
      const double active = c.num_experts_per_tok + c.n_shared_experts;
      cost.ffn_flops += 2.0 * n * (h * c.n_routed_experts + active * ExpertParams(c));
      cost.weight_bytes += kF32 * (h * c.n_routed_experts + c.n_routed_experts +
                                   (DistinctExperts(c, n) + c.n_shared_experts) * ExpertParams(c));
    }
  }
  cost.weight_bytes += kF32 * n * h;  // embedding rows
  if (logit_rows > 0) {
    cost.lm_head_flops = 2.0 * logit_rows * h * c.vocab_size;
    cost.weight_bytes += kF32 * (h * c.vocab_size + h);
  }
  return cost;
}

ForwardCost PrefillCost(const ModelConfig& c, int32_t prompt_len, int32_t chunk) {
  ForwardCost total;
  for (int32_t begin = 0; begin < prompt_len; begin += chunk) {
    const int32_t end = std::min(prompt_len, begin + chunk);
    std::vector<int32_t> positions;
    for (int32_t p = begin; p < end; ++p) positions.push_back(p);
    total += CostOfPass(c, {positions}, end == prompt_len ? 1 : 0);
  }
  return total;
}

double AllWeightBytes(const ModelConfig& c) {
  double params = 0.0;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    params += ProjectionParams(c);
    if (c.indexer_types[l] == IndexerType::kFull) params += IndexerParams(c);
    params += c.mlp_types[l] == MlpType::kDense
                  ? 3.0 * c.hidden_size * c.intermediate_size
                  : c.hidden_size * c.n_routed_experts + (c.n_routed_experts + c.n_shared_experts) * ExpertParams(c);
  }
  params += static_cast<double>(c.hidden_size) * c.vocab_size;
  return kF32 * params;
}

const char* CostFormulaMarkdown() {
  return "Per token at absolute position p, per layer (H hidden, qr q_lora, C kv_lora, nh heads, dn/dr/dv "
         "nope/rope/v head dims, ih/id indexer heads/dim, k index_topk, I intermediate, Im moe_intermediate, "
         "E experts of which K active, S shared, V vocab); a multiply-add is 2 FLOPs; norms, RoPE, SiLU, "
         "softmax and residual adds are left out (about 1%):\n\n"
         "| part | FLOPs | what |\n| --- | --- | --- |\n"
         "| projections | 2·(H·qr + qr·nh·(dn+dr) + H·(C+dr) + nh·dn·C + nh·C·dv + nh·dv·H) | q_a, q_b, kv_a, "
         "absorbed w_uk, absorbed w_uv, o_proj |\n"
         "| indexer (Full layers) | 2·(qr·ih·id + H·id + H·ih) + (p+1)·(2·ih·id + 3·ih) | wq_b, wk, weights_proj; "
         "q·k per head and visible key, ReLU, weight, sum |\n"
         "| sparse attention | min(k, p+1)·nh·(2·(C+dr) + 2·C) | scores over [latent, rope] rows, weighted latent sum "
         "|\n"
         "| FFN | dense 2·3·H·I; MoE 2·H·E + (K+S)·2·3·H·Im | router, active routed experts, shared experts |\n"
         "| lm_head | 2·H·V per row that needs logits | prefill: the last prompt row only; decode: every row |\n\n"
         "Minimum bytes (F32, as the CPU backend stores weights): every weight the pass uses read once (routed "
         "experts: the expected distinct count E·(1−(1−K/E)^n) for n tokens), the new cache rows written, each "
         "sequence's index keys read once per pass per Full layer, and min(context, Σ min(k, p+1)) latent rows read "
         "per sequence and layer. Prefill runs in chunks of max_batch_tokens, so weights are read once per chunk.\n";
}

}  // namespace indexcache::bench
