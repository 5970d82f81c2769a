// Dense ops of the CPU backend: projections through BLAS, row-wise norms, RoPE, activations.
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/backend/cpu/cpu_backend.h"

namespace indexcache {

void CpuBackend::Embedding(Tensor table, Tensor ids, Tensor out) {
  const int32_t* id = ids.ptr<int32_t>();
#pragma omp parallel for
  for (int64_t r = 0; r < out.rows; ++r) {
    std::memcpy(out.row<float>(r), table.row<float>(id[r * ids.stride]), out.cols * sizeof(float));
  }
}

namespace {
// out = x · wᵀ + beta · out
void Gemm(Tensor x, Tensor w, Tensor out, float beta) {
  if (x.rows == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(x.rows),
              static_cast<int>(w.rows), static_cast<int>(x.cols), 1.0f, x.ptr<float>(),
              static_cast<int>(x.stride), w.ptr<float>(), static_cast<int>(w.stride), beta,
              out.ptr<float>(), static_cast<int>(out.stride));
}
}  // namespace

void CpuBackend::Linear(Tensor x, Tensor w, Tensor out) { Gemm(x, w, out, 0.0f); }

void CpuBackend::LinearAdd(Tensor x, Tensor w, Tensor out) { Gemm(x, w, out, 1.0f); }

void CpuBackend::HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) {
  const int64_t in = x.cols / heads;
  const int64_t out_per_head = out.cols / heads;
  for (int32_t h = 0; h < heads; ++h) {
    Linear(x.Cols(h * in, in), w.Rows(h * out_per_head, out_per_head),
           out.Cols(h * out_per_head, out_per_head));
  }
}

void CpuBackend::RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) {
  const float* w = weight.ptr<float>();
#pragma omp parallel for
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* in = x.row<float>(r);
    float* o = out.row<float>(r);
    double sum_sq = 0.0;
    for (int64_t c = 0; c < x.cols; ++c) sum_sq += static_cast<double>(in[c]) * in[c];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / x.cols) + eps);
    for (int64_t c = 0; c < x.cols; ++c) o[c] = w[c] * (in[c] * inv);
  }
}

void CpuBackend::LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) {
  const float* w = weight.ptr<float>();
  const float* b = bias.ptr<float>();
#pragma omp parallel for
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* in = x.row<float>(r);
    float* o = out.row<float>(r);
    double mean = 0.0;
    for (int64_t c = 0; c < x.cols; ++c) mean += in[c];
    mean /= x.cols;
    double var = 0.0;
    for (int64_t c = 0; c < x.cols; ++c) var += (in[c] - mean) * (in[c] - mean);
    var /= x.cols;  // biased, as torch.nn.LayerNorm
    const float inv = 1.0f / std::sqrt(static_cast<float>(var) + eps);
    for (int64_t c = 0; c < x.cols; ++c) o[c] = (in[c] - static_cast<float>(mean)) * inv * w[c] + b[c];
  }
}

void CpuBackend::RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset,
                                 int32_t rope_dim, float theta, Tensor token_pos) {
  const int32_t half = rope_dim / 2;
  // Frequencies as transformers computes them: 1 / theta^(2i / dim) in float32.
  std::vector<float> inv_freq(half);
  for (int32_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(rope_dim));
  }
  const int32_t* pos = token_pos.ptr<int32_t>();
#pragma omp parallel for
  for (int64_t r = 0; r < x.rows; ++r) {
    std::vector<float> cos_v(half), sin_v(half), tmp(rope_dim);
    const float p = static_cast<float>(pos[r * token_pos.stride]);
    for (int32_t i = 0; i < half; ++i) {
      const float angle = inv_freq[i] * p;
      cos_v[i] = std::cos(angle);
      sin_v[i] = std::sin(angle);
    }
    for (int32_t h = 0; h < heads; ++h) {
      float* v = x.row<float>(r) + h * head_stride + rope_offset;
      for (int32_t i = 0; i < half; ++i) {
        const float even = v[2 * i], odd = v[2 * i + 1];
        tmp[i] = even * cos_v[i] - odd * sin_v[i];
        tmp[half + i] = odd * cos_v[i] + even * sin_v[i];
      }
      std::memcpy(v, tmp.data(), rope_dim * sizeof(float));
    }
  }
}

void CpuBackend::SiluMul(Tensor gate_up, Tensor out) {
  const int64_t inter = out.cols;
#pragma omp parallel for
  for (int64_t r = 0; r < out.rows; ++r) {
    const float* g = gate_up.row<float>(r);
    const float* u = g + inter;
    float* o = out.row<float>(r);
    for (int64_t c = 0; c < inter; ++c) o[c] = g[c] / (1.0f + std::exp(-g[c])) * u[c];
  }
}

void CpuBackend::Add(Tensor x, Tensor y) {
#pragma omp parallel for
  for (int64_t r = 0; r < x.rows; ++r) {
    float* a = x.row<float>(r);
    const float* b = y.row<float>(r);
    for (int64_t c = 0; c < x.cols; ++c) a[c] += b[c];
  }
}

void CpuBackend::GatherRows(Tensor src, Tensor row_ids, Tensor dst) {
  const int32_t* id = row_ids.ptr<int32_t>();
  for (int64_t r = 0; r < dst.rows; ++r) {
    std::memcpy(dst.row<char>(0) + r * dst.stride * DTypeSize(dst.dtype),
                src.row<char>(0) + id[r * row_ids.stride] * src.stride * DTypeSize(src.dtype),
                dst.cols * DTypeSize(dst.dtype));
  }
}

void CpuBackend::ArgMax(Tensor x, Tensor out) {
  for (int64_t r = 0; r < x.rows; ++r) {
    const float* row = x.row<float>(r);
    int32_t best = -1;
    float best_value = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < x.cols; ++j) {
      if (row[j] > best_value) {  // false for NaN; strict, so ties keep the lower column
        best_value = row[j];
        best = static_cast<int32_t>(j);
      }
    }
    out.row<int32_t>(r)[0] = best;
  }
}

void CpuBackend::SampleTokens(Tensor x, Tensor draws, Tensor out) {
  for (int64_t r = 0; r < x.rows; ++r) {
    SamplingDraw draw;
    std::memcpy(static_cast<void*>(&draw), draws.row<int32_t>(r), sizeof(draw));  // the words, as uploaded
    // The pipeline refuses only rows without a usable logit: -1, as ArgMax says for them.
    const absl::StatusOr<int32_t> token = sampling_.Run(absl::MakeConstSpan(x.row<float>(r), x.cols), draw);
    out.row<int32_t>(r)[0] = token.ok() ? *token : -1;
  }
}

}  // namespace indexcache
