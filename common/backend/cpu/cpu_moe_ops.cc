// Mixture-of-experts on the CPU backend: the group-limited sigmoid router and SwiGLU experts run
// expert by expert over the tokens routed to each (one GEMM pair per expert).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/backend/cpu/cpu_backend.h"
#include "common/backend/moe_expert_choice.h"

namespace indexcache {

void CpuBackend::MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing,
                          Tensor topk_ids, Tensor topk_weights) {
  const int32_t experts = routing.num_experts;
  std::vector<float> logits(static_cast<size_t>(x.rows) * experts);
  Linear(x, gate_w, Tensor::Matrix(logits.data(), DType::kF32, x.rows, experts));
  const float* bias = correction_bias.ptr<float>();
#pragma omp parallel
  {
    std::vector<float> score(experts), choice(experts), group_score(routing.n_group);
    std::unique_ptr<bool[]> taken(new bool[experts]);
#pragma omp for
    for (int64_t r = 0; r < x.rows; ++r) {
      for (int32_t e = 0; e < experts; ++e) {
        score[e] = 1.0f / (1.0f + std::exp(-logits[r * experts + e]));
        choice[e] = score[e] + bias[e];
      }
      ChooseExperts(score.data(), choice.data(), routing, group_score.data(), taken.get(), topk_ids.row<int32_t>(r),
                    topk_weights.row<float>(r));
    }
  }
}

void CpuBackend::MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, Tensor topk_ids,
                            Tensor topk_weights, Tensor out, int32_t first_expert) {
  const int64_t hidden = x.cols;
  const int64_t inter = down.cols;
  // Bucket (token, weight) pairs by local expert; other ranks' experts are theirs to add.
  std::vector<std::vector<std::pair<int32_t, float>>> routed(num_experts);
  for (int64_t r = 0; r < x.rows; ++r) {
    for (int64_t k = 0; k < topk_ids.cols; ++k) {
      const int32_t e = topk_ids.row<int32_t>(r)[k] - first_expert;
      if (e >= 0 && e < num_experts) routed[e].emplace_back(static_cast<int32_t>(r), topk_weights.row<float>(r)[k]);
    }
  }
  std::vector<float> xs, gu, act, y;
  for (int32_t e = 0; e < num_experts; ++e) {
    const auto& tokens = routed[e];
    const int64_t m = static_cast<int64_t>(tokens.size());
    if (m == 0) continue;
    xs.resize(m * hidden);
    for (int64_t i = 0; i < m; ++i) std::memcpy(&xs[i * hidden], x.row<float>(tokens[i].first), hidden * sizeof(float));
    gu.resize(m * 2 * inter);
    act.resize(m * inter);
    y.resize(m * hidden);
    Tensor xs_t = Tensor::Matrix(xs.data(), DType::kF32, m, hidden);
    Tensor gu_t = Tensor::Matrix(gu.data(), DType::kF32, m, 2 * inter);
    Tensor act_t = Tensor::Matrix(act.data(), DType::kF32, m, inter);
    Linear(xs_t, gate_up.Rows(e * 2 * inter, 2 * inter), gu_t);
    SiluMul(gu_t, act_t);
    Linear(act_t, down.Rows(e * hidden, hidden), Tensor::Matrix(y.data(), DType::kF32, m, hidden));
#pragma omp parallel for
    for (int64_t i = 0; i < m; ++i) {
      float* o = out.row<float>(tokens[i].first);
      const float w = tokens[i].second;
      for (int64_t c = 0; c < hidden; ++c) o[c] += w * y[i * hidden + c];
    }
  }
}

}  // namespace indexcache
