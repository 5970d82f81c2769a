// What prefilling a prompt costs, in FLOPs, counted from the model's dimensions: the router's measure
// of a prefill worker's queued work (services/router/worker_capacity.h), where prompt tokens alone
// would rank one 128K prompt with eight 16K ones although its indexer does eight times their work.
//
// Per position p (0-based) of the prompt, a DSA layer runs:
//   - its projections and MLP, a fixed 2 FLOPs per weight a token multiplies: MLA's q_a, q_b, kv_a,
//     kv_b and o; a Full layer's indexer projections (wq_b, wk, weights_proj); a dense MLP's three
//     matrices, or a MoE layer's router, its shared experts and num_experts_per_tok routed ones;
//   - on a Full layer, the lightning indexer over every key so far: 2 · index_n_heads ·
//     index_head_dim · (p + 1) — the quadratic term, which a Shared layer skips (IndexCache's saving);
//   - sparse MLA over min(p + 1, index_topk) selected keys, absorbed form (what the kernels run):
//     2 · num_heads · (latent_cache_dim + kv_lora_rank) per key.
// plus the LM head for the last position only. Positions already cached (a prefix-cache hit) cost
// nothing. The count is a model of the work, not a profile: it ignores norms, RoPE, top-k selection
// and softmax, which are small against these terms at every length.
#pragma once

#include <cstdint>

#include "common/model/model_config.h"

namespace indexcache {

struct PrefillWork {
  double projections = 0;  // linear in the positions computed
  double indexer = 0;      // quadratic: Full layers only
  double attention = 0;    // grows with the context up to index_topk keys, then linear
  double total() const { return projections + indexer + attention; }
};

// The work of computing positions [cached_tokens, prompt_tokens) of a prompt under `config`'s
// indexer_types (0 <= cached_tokens <= prompt_tokens).
PrefillWork PrefillWorkOf(const ModelConfig& config, int64_t prompt_tokens, int64_t cached_tokens = 0);

}  // namespace indexcache
