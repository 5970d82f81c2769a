// What the handoff's integrity check carries per Full layer (the prefill worker captures it,
// common/model/probe_capture.h; the decode worker re-runs the selection, Engine::VerifyProbes).
#pragma once

#include <cstdint>
#include <vector>

namespace indexcache {

// One token's lightning-indexer inputs and result on one Full layer: enough for another worker to
// re-run the selection over the same keys and check it.
struct IndexerProbe {
  int32_t layer = 0;
  std::vector<float> query;         // [index_n_heads · index_head_dim], roped
  std::vector<float> head_weights;  // [index_n_heads], scaled as IndexerTopK uses them
  std::vector<int32_t> topk;        // selected key positions (no -1 padding), best first
};

}  // namespace indexcache
