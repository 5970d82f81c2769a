#include "common/model/activations.h"

#include <algorithm>

namespace indexcache {

Activations Carve(const ModelConfig& c, DType act, int64_t n, int64_t num_seqs, int64_t max_blocks, int64_t topk_cols,
                  int64_t logit_rows, Workspace& ws, bool sharded) {
  const int64_t widest_mlp = std::max<int64_t>(c.intermediate_size, int64_t{c.moe_intermediate_size} * std::max(c.n_shared_experts, 1));
  Activations a;
  a.ids = ws.Take(DType::kI32, n, 1);
  a.pos = ws.Take(DType::kI32, n, 1);
  a.seq = ws.Take(DType::kI32, n, 1);
  a.slots = ws.Take(DType::kI32, n, 1);
  a.tables = ws.Take(DType::kI32, num_seqs, max_blocks);
  a.logit_rows = ws.Take(DType::kI32, logit_rows, 1);
  a.x = ws.Take(DType::kF32, n, c.hidden_size);
  a.h = ws.Take(act, n, c.hidden_size);
  const int64_t q_width = int64_t{c.num_heads} * c.qk_head_dim(), index_q_width = int64_t{c.index_n_heads} * c.index_head_dim;
  a.hidden_proj = ws.Take(act, n, c.q_lora_rank + c.latent_cache_dim() + c.index_head_dim + c.index_n_heads);
  a.qa = a.hidden_proj.Cols(0, c.q_lora_rank);
  a.latent = a.hidden_proj.Cols(c.q_lora_rank, c.latent_cache_dim());
  a.index_k = a.hidden_proj.Cols(c.q_lora_rank + c.latent_cache_dim(), c.index_head_dim);
  a.index_w = a.hidden_proj.Cols(c.q_lora_rank + c.latent_cache_dim() + c.index_head_dim, c.index_n_heads);
  a.q_latent_proj = ws.Take(act, n, q_width + index_q_width);
  a.q = a.q_latent_proj.Cols(0, q_width);
  a.index_q = a.q_latent_proj.Cols(q_width, index_q_width);
  a.topk = ws.Take(DType::kI32, n, topk_cols);
  a.q_latent = ws.Take(act, n, int64_t{c.num_heads} * c.kv_lora_rank);
  a.o_latent = ws.Take(act, n, int64_t{c.num_heads} * c.kv_lora_rank);
  a.o_heads = ws.Take(act, n, int64_t{c.num_heads} * c.v_head_dim);
  a.gate_up = ws.Take(act, n, 2 * widest_mlp);
  a.act = ws.Take(act, n, widest_mlp);
  a.route_ids = ws.Take(DType::kI32, n, c.num_experts_per_tok);
  a.route_weights = ws.Take(DType::kF32, n, c.num_experts_per_tok);
  a.final_x = ws.Take(DType::kF32, logit_rows, c.hidden_size);
  a.logits = ws.Take(DType::kF32, logit_rows, c.vocab_size);
  a.argmax = ws.Take(DType::kI32, logit_rows, 1);
  a.draws = ws.Take(DType::kI32, logit_rows, kSamplingDrawWords);
  a.sampled = ws.Take(DType::kI32, logit_rows, 1);
  if (sharded) a.partial = ws.Take(DType::kF32, n, c.hidden_size);
  return a;
}

}  // namespace indexcache
