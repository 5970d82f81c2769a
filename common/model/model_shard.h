// This rank's part of a model sharded across the `size` ranks of one group (one process per GPU, or
// threads as ranks on the CPU: common/parallel/communicator.h):
//   tensor parallel — attention heads [rank·H/size, (rank+1)·H/size): their rows of q_b_proj and
//     kv_b_proj and their columns of o_proj; the dense MLPs' and shared experts' intermediate
//     columns likewise (their gate/up rows, their down columns);
//   expert parallel — routed experts [rank·E/size, (rank+1)·E/size).
// Everything else is replicated: the embedding, the norms, q_a/kv_a (so the MLA latent and its cache
// are whole on every rank — MLA's latent is shared by all heads, so sharding heads cannot split it),
// the indexer and its keys (every rank selects the same top-k), the router and the LM head. The
// sharded sublayers' outputs are partial sums, all-reduced before they join the residual stream.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "common/model/model_config.h"

namespace indexcache {

struct ModelShard {
  int32_t rank = 0;
  int32_t size = 1;
  bool tensor_parallel = false;
  bool expert_parallel = false;

  bool sharded() const { return size > 1 && (tensor_parallel || expert_parallel); }
  // This rank's [begin, end) of `total` items split evenly (Validate checks divisibility).
  std::pair<int64_t, int64_t> Range(int64_t total) const {
    return {total / size * rank, total / size * (rank + 1)};
  }
};

// Refuses a shard that does not split the model evenly (heads, intermediate sizes, experts) or names
// a rank outside the group.
absl::Status ValidateShard(const ModelConfig& config, const ModelShard& shard);

}  // namespace indexcache
