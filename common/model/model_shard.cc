#include "common/model/model_shard.h"

#include "absl/strings/str_format.h"

namespace indexcache {

absl::Status ValidateShard(const ModelConfig& c, const ModelShard& s) {
  if (s.size < 1 || s.rank < 0 || s.rank >= s.size) {
    return absl::InvalidArgumentError(absl::StrFormat("rank %d of a group of %d", s.rank, s.size));
  }
  auto divides = [&](const char* what, int64_t total) -> absl::Status {
    if (total % s.size == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("%s (%d) do not split evenly across %d ranks", what, total, s.size));
  };
  if (s.tensor_parallel) {
    if (absl::Status st = divides("attention heads", c.num_heads); !st.ok()) return st;
    if (absl::Status st = divides("the dense MLP's intermediate columns", c.intermediate_size); !st.ok()) return st;
    const int64_t shared = int64_t{c.moe_intermediate_size} * c.n_shared_experts;
    if (absl::Status st = divides("the shared experts' intermediate columns", shared); !st.ok()) return st;
  }
  if (s.expert_parallel) {
    if (absl::Status st = divides("routed experts", c.n_routed_experts); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace indexcache
