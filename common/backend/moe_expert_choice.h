// The group-limited expert choice of GLM-5 / DeepSeek-V3 routers, for one token, shared by the CPU
// backend and the CUDA backend's routing kernel (compiled for both sides) so that both pick experts
// by exactly the same rule, ties included.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/backend/backend.h"

#ifdef __CUDACC__
#define IC_HOST_DEVICE __host__ __device__
#else
#define IC_HOST_DEVICE
#endif

namespace indexcache {

// score[e]: the token's sigmoid router score of expert e; choice[e]: score + correction bias (the
// ranking key; overwritten). A group's score is the sum of its two best choices; only the best
// topk_group groups stay eligible (ties to the lower group). Then the top_k eligible experts by
// choice (ties to the lower id) are written to ids[0..top_k) with their scores, normalized to sum 1
// when norm_topk_prob, times routed_scaling_factor. group_score: n_group floats; taken: num_experts flags.
IC_HOST_DEVICE inline void ChooseExperts(const float* score, float* choice, const MoeRouting& routing,
                                         float* group_score, bool* taken, int32_t* ids, float* weights) {
  const int32_t experts = routing.num_experts;
  const int32_t per_group = experts / routing.n_group;
  if (routing.n_group > 1) {
    for (int32_t g = 0; g < routing.n_group; ++g) {
      float best = -INFINITY, second = -INFINITY;
      for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        if (choice[e] > best) {
          second = best;
          best = choice[e];
        } else if (choice[e] > second) {
          second = choice[e];
        }
      }
      group_score[g] = best + (per_group > 1 ? second : 0.0f);
    }
    for (int32_t g = 0; g < routing.n_group; ++g) {
      int32_t better = 0;  // groups ranked above g
      for (int32_t o = 0; o < routing.n_group; ++o) {
        better += group_score[o] > group_score[g] || (group_score[o] == group_score[g] && o < g);
      }
      if (better >= routing.topk_group) {
        for (int32_t e = g * per_group; e < (g + 1) * per_group; ++e) choice[e] = -INFINITY;
      }
    }
  }
  for (int32_t e = 0; e < experts; ++e) taken[e] = false;
  float sum = 0.0f;
  for (int32_t k = 0; k < routing.top_k; ++k) {
    int32_t best = -1;
    for (int32_t e = 0; e < experts; ++e) {
      if (!taken[e] && (best < 0 || choice[e] > choice[best])) best = e;
    }
    taken[best] = true;
    ids[k] = best;
    weights[k] = score[best];
    sum += score[best];
  }
  const float norm = routing.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (int32_t k = 0; k < routing.top_k; ++k) weights[k] *= norm * routing.routed_scaling_factor;
}

}  // namespace indexcache

#undef IC_HOST_DEVICE
