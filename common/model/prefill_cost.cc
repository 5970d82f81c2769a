#include "common/model/prefill_cost.h"

#include <algorithm>

namespace indexcache {
namespace {

// Σ (p + 1) over p in [begin, end): the keys the indexer scores for those positions.
double KeysScored(int64_t begin, int64_t end) {
  const auto triangle = [](int64_t n) { return static_cast<double>(n) * static_cast<double>(n + 1) / 2; };
  return triangle(end) - triangle(begin);
}

// Σ min(p + 1, topk) over p in [begin, end): the keys sparse attention reads for those positions.
double KeysAttended(int64_t begin, int64_t end, int64_t topk) {
  const int64_t growing_end = std::clamp<int64_t>(topk, begin, end);  // positions with p + 1 <= topk
  return KeysScored(begin, growing_end) + static_cast<double>(end - growing_end) * static_cast<double>(topk);
}

// Weights one position multiplies in `layer`.
double WeightsPerPosition(const ModelConfig& c, int32_t layer) {
  const double hidden = c.hidden_size;
  const double heads = c.num_heads;
  double weights = hidden * c.q_lora_rank + static_cast<double>(c.q_lora_rank) * heads * c.qk_head_dim() +
                   hidden * c.latent_cache_dim() +
                   static_cast<double>(c.kv_lora_rank) * heads * (c.qk_nope_head_dim + c.v_head_dim) +
                   heads * c.v_head_dim * hidden;
  if (c.indexer_types[layer] == IndexerType::kFull) {
    weights += static_cast<double>(c.q_lora_rank) * c.index_n_heads * c.index_head_dim +
               hidden * c.index_head_dim + hidden * c.index_n_heads;
  }
  if (c.mlp_types[layer] == MlpType::kMoe) {
    weights += hidden * c.n_routed_experts +
               3.0 * hidden * c.moe_intermediate_size * (c.num_experts_per_tok + c.n_shared_experts);
  } else {
    weights += 3.0 * hidden * c.intermediate_size;
  }
  return weights;
}

}  // namespace

PrefillWork PrefillWorkOf(const ModelConfig& c, int64_t prompt_tokens, int64_t cached_tokens) {
  PrefillWork work;
  cached_tokens = std::clamp<int64_t>(cached_tokens, 0, prompt_tokens);
  const double positions = static_cast<double>(prompt_tokens - cached_tokens);
  if (positions <= 0) return work;
  const double attended = KeysAttended(cached_tokens, prompt_tokens, c.index_topk);
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    work.projections += 2.0 * WeightsPerPosition(c, layer) * positions;
    work.attention += 2.0 * c.num_heads * (c.latent_cache_dim() + c.kv_lora_rank) * attended;
    if (c.indexer_types[layer] == IndexerType::kFull) {
      work.indexer += 2.0 * c.index_n_heads * c.index_head_dim * KeysScored(cached_tokens, prompt_tokens);
    }
  }
  work.projections += 2.0 * static_cast<double>(c.hidden_size) * c.vocab_size;  // the last position's logits
  return work;
}

}  // namespace indexcache
