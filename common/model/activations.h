// Every activation of one forward pass of DsaModel, carved from a Workspace: the I32 batch metadata
// the pass reads and the intermediates it writes. Those are stored as the backend's activation dtype
// (BF16 on CUDA: each is the input of a matrix product or of the paged cache), except what sums or
// decides: the residual stream x (every sublayer adds its output into it inside its last product),
// the router weights, and the final rows and logits, which stay F32. The eager pass carves them per batch; a decode
// graph (decode_graphs.h) carves them once per bucket and keeps them, since its recording holds their
// addresses.
#pragma once

#include <cstdint>

#include "common/backend/tensor.h"
#include "common/backend/workspace.h"
#include "common/model/model_config.h"
#include "common/sampling/sampling_draw.h"

namespace indexcache {

struct Activations {
  Tensor ids, pos, seq, slots, tables, logit_rows;  // I32 batch metadata
  Tensor x, h;                                      // [n, hidden] residual stream (F32), normed input
  // The outputs of the stacked projections (model_weights.h), and column views of them:
  Tensor hidden_proj;                               // [n, q_lora + kv_lora + rope + ID + IH] from h
  Tensor qa, latent, index_k, index_w;              //   [n, q_lora], [n, kv_lora + rope] (the cache row), [n, ID], [n, IH]
  Tensor q_latent_proj;                             // [n, H·(nope + rope) + IH·ID] from qa
  Tensor q, index_q;                                //   [n, H·(nope + rope)] grouped: nope block | rope block; [n, IH·ID]
  Tensor topk;                                      // I32 [n, k]
  Tensor q_latent, o_latent;                        // [n, H·kv_lora]
  Tensor o_heads;                                   // [n, H·v]
  Tensor gate_up, act;                              // [n, 2I], [n, I] (widest MLP)
  Tensor route_ids, route_weights;                  // [n, experts_per_tok]
  Tensor final_x, logits;                           // [r, hidden], [r, vocab]
  Tensor argmax;                                    // I32 [r, 1] (ForwardBatch::argmax_only)
  Tensor draws;                                     // I32 [r, kSamplingDrawWords] (ForwardBatch::draws)
  Tensor sampled;                                   // I32 [r, 1] Backend::SampleTokens' ids
  Tensor partial;                                   // [n, hidden] F32: a sharded sublayer's partial sum
                                                    // before its all-reduce (model_shard.h); sharded only
};

// Takes every activation of a pass over n tokens of num_seqs sequences from `ws` (in a measuring pass
// or a real one: see Workspace); `act` is the backend's activation dtype. `c.num_heads` is the heads the
// pass runs (a tensor-parallel rank's); `sharded` also takes `partial`.
Activations Carve(const ModelConfig& c, DType act, int64_t n, int64_t num_seqs, int64_t max_blocks, int64_t topk_cols,
                  int64_t logit_rows, Workspace& ws, bool sharded = false);

}  // namespace indexcache
