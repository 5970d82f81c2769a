// The analytic cost of a glm_moe_dsa forward pass, derived from the config alone: floating-point
// operations (a multiply-add counts 2) and the fewest bytes the pass must move (every weight it uses
// read once, F32 as the CPU backend stores them; cache rows read and written once). Elementwise work
// (norms, RoPE, SiLU, softmax exponentials, residual adds) is left out: they add about 1% to the FLOPs.
//
// Per token at absolute position p, per layer (H hidden, qr q_lora, C kv_lora, nh heads, dn/dr/dv
// nope/rope/v head dims, ih/id indexer heads/dim, k index_topk, I intermediate, Im moe_intermediate,
// E experts of which K active, S shared, V vocab):
//   projections  2·(H·qr + qr·nh·(dn+dr) + H·(C+dr) + nh·dn·C + nh·C·dv + nh·dv·H)
//                 q_a, q_b, kv_a, absorbed w_uk (q_nope → latent), absorbed w_uv (latent → v), o_proj
//   indexer      Full layers only: 2·(qr·ih·id + H·id + H·ih) + (p+1)·(2·ih·id + 3·ih)
//                 wq_b, wk, weights_proj; then q·k for every head and visible key, ReLU·weight·sum
//   attention    min(k, p+1)·nh·(2·(C+dr) + 2·C)   scores over the latent+rope row, weighted latent sum
//   ffn          dense: 2·3·H·I;  MoE: 2·H·E (router) + (K + S)·2·3·H·Im
//   lm_head      2·H·V per row that needs logits
#pragma once

#include <cstdint>
#include <vector>

#include "common/model/model_config.h"

namespace indexcache::bench {

struct ForwardCost {
  double projection_flops = 0.0;
  double indexer_flops = 0.0;
  double attention_flops = 0.0;
  double ffn_flops = 0.0;
  double lm_head_flops = 0.0;
  double weight_bytes = 0.0;  // weights read (routed experts: the expected number of distinct ones)
  double cache_bytes = 0.0;   // cache rows written and read

  double flops() const { return projection_flops + indexer_flops + attention_flops + ffn_flops + lm_head_flops; }
  double bytes() const { return weight_bytes + cache_bytes; }
  ForwardCost& operator+=(const ForwardCost& other);
  void Scale(double factor);  // every term times `factor` (sums → means)
};

// One forward pass over the tokens of one or more sequences. `sequences[s]` lists the absolute
// positions of sequence s's tokens in this pass (contiguous, ascending); `logit_rows` rows get logits.
ForwardCost CostOfPass(const ModelConfig& c, const std::vector<std::vector<int32_t>>& sequences, int64_t logit_rows);

// A prompt of `prompt_len` tokens prefilled in chunks of `chunk` tokens, logits for the last one only
// (what the engine does up to the first sampled token).
ForwardCost PrefillCost(const ModelConfig& c, int32_t prompt_len, int32_t chunk);

// The parameters one forward pass may touch, F32 bytes, for the summary (embedding rows excluded).
double AllWeightBytes(const ModelConfig& c);

// The formula above as markdown, for the report.
const char* CostFormulaMarkdown();

}  // namespace indexcache::bench
