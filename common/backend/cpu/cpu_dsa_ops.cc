// DeepSeek Sparse Attention on the CPU backend: cache writes, the lightning indexer's scores and
// top-k over the paged index-key cache, and MLA attention in latent form over the selected keys.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/backend/cpu/cpu_backend.h"

namespace indexcache {
namespace {

// Cache slot of position `pos` of the sequence whose block table row is `table`.
inline int64_t SlotOf(const BatchLayout& batch, int32_t seq, int32_t pos) {
  const int32_t* table = batch.block_tables.row<int32_t>(seq);
  return static_cast<int64_t>(table[pos / batch.block_size]) * batch.block_size + pos % batch.block_size;
}

// Copies the first `length` positions of a sequence's cache rows into a dense [length, cols] array.
void GatherSequence(const BatchLayout& batch, Tensor pool, int32_t seq, int32_t length, float* dst) {
  for (int32_t s = 0; s < length; ++s) {
    std::memcpy(dst + static_cast<int64_t>(s) * pool.cols, pool.row<float>(SlotOf(batch, seq, s)),
                pool.cols * sizeof(float));
  }
}

// Writes the top-min(k, n) indices of `scores[0..n)` into out (descending score; ties to the lower
// position, which makes the selection deterministic) and pads with -1 up to k.
void SelectTopK(const float* scores, int32_t n, int32_t k, int32_t* out, std::vector<int32_t>& order) {
  const int32_t take = std::min(k, n);
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  auto better = [scores](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  if (take < n) std::nth_element(order.begin(), order.begin() + take, order.end(), better);
  std::sort(order.begin(), order.begin() + take, better);
  std::copy_n(order.begin(), take, out);
  std::fill(out + take, out + k, -1);
}

}  // namespace

void CpuBackend::WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) {
  const int32_t* slot = slot_mapping.ptr<int32_t>();
  for (int64_t r = 0; r < src.rows; ++r) {
    const int32_t s = slot[r * slot_mapping.stride];
    if (s >= 0) std::memcpy(pool.row<float>(s), src.row<float>(r), src.cols * sizeof(float));
  }
}

void CpuBackend::IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool,
                             const BatchLayout& batch, float scale, Tensor out) {
  const int64_t dim = key_pool.cols;
  const int32_t* seq_of = batch.token_seq.ptr<int32_t>();
  const int32_t* pos_of = batch.token_pos.ptr<int32_t>();
  const int64_t n = q.rows;
  // Tokens are processed in runs of one sequence: its keys are gathered once, and a run's queries go
  // through one GEMM [run·H, D] × [D, L]. Runs are cut so the score tile stays near 64 MB: memory grows
  // with chunk × context, never context².
  std::vector<float> keys, q_tile, tile_scores;
  int64_t begin = 0;
  while (begin < n) {
    const int32_t seq = seq_of[begin * batch.token_seq.stride];
    int64_t end = begin;
    int32_t length = 0;
    while (end < n && seq_of[end * batch.token_seq.stride] == seq) {
      length = std::max(length, pos_of[end * batch.token_pos.stride] + 1);
      ++end;
    }
    keys.resize(static_cast<size_t>(length) * dim);
    GatherSequence(batch, key_pool, seq, length, keys.data());
    const int64_t tile = std::max<int64_t>(1, (int64_t{16} << 20) / (int64_t{heads} * length));
    for (int64_t t0 = begin; t0 < end; t0 += tile) {
      const int64_t count = std::min(tile, end - t0);
      q_tile.resize(static_cast<size_t>(count) * heads * dim);
      for (int64_t i = 0; i < count; ++i) {
        std::memcpy(q_tile.data() + i * heads * dim, q.row<float>(t0 + i), heads * dim * sizeof(float));
      }
      tile_scores.resize(static_cast<size_t>(count) * heads * length);
      // [count·H, D] × [L, D]ᵀ → [count·H, L]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(count * heads), length,
                  static_cast<int>(dim), scale, q_tile.data(), static_cast<int>(dim), keys.data(),
                  static_cast<int>(dim), 0.0f, tile_scores.data(), length);
#pragma omp parallel
      {
        std::vector<float> index_score;
        std::vector<int32_t> order;
#pragma omp for
        for (int64_t i = 0; i < count; ++i) {
          const int64_t r = t0 + i;
          const int32_t visible = pos_of[r * batch.token_pos.stride] + 1;
          const float* w = head_weights.row<float>(r);
          index_score.assign(visible, 0.0f);
          for (int32_t h = 0; h < heads; ++h) {
            const float* s = tile_scores.data() + (i * heads + h) * length;
            for (int32_t k = 0; k < visible; ++k) index_score[k] += w[h] * std::max(s[k], 0.0f);
          }
          SelectTopK(index_score.data(), visible, static_cast<int32_t>(out.cols), out.row<int32_t>(r), order);
        }
      }
    }
    begin = end;
  }
}

void CpuBackend::SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                                    const BatchLayout& batch, Tensor indices, float scale, Tensor out) {
  const int64_t latent_dim = q_latent.cols / heads;
  const int64_t rope_dim = q_rope.cols / heads;
  const int32_t* seq_of = batch.token_seq.ptr<int32_t>();
#pragma omp parallel
  {
    std::vector<const float*> rows;
    std::vector<float> prob;
#pragma omp for
    for (int64_t r = 0; r < q_latent.rows; ++r) {
      const int32_t seq = seq_of[r * batch.token_seq.stride];
      const int32_t* selected = indices.row<int32_t>(r);
      rows.clear();
      for (int64_t k = 0; k < indices.cols && selected[k] >= 0; ++k) {
        rows.push_back(latent_pool.row<float>(SlotOf(batch, seq, selected[k])));
      }
      const size_t count = rows.size();
      prob.resize(count);
      for (int32_t h = 0; h < heads; ++h) {
        const float* ql = q_latent.row<float>(r) + h * latent_dim;
        const float* qr = q_rope.row<float>(r) + h * rope_dim;
        float max_score = -INFINITY;
        for (size_t k = 0; k < count; ++k) {
          const float* c = rows[k];
          float dot = 0.0f;
          for (int64_t d = 0; d < latent_dim; ++d) dot += ql[d] * c[d];
          for (int64_t d = 0; d < rope_dim; ++d) dot += qr[d] * c[latent_dim + d];
          prob[k] = dot * scale;
          max_score = std::max(max_score, prob[k]);
        }
        float total = 0.0f;
        for (size_t k = 0; k < count; ++k) {
          prob[k] = std::exp(prob[k] - max_score);
          total += prob[k];
        }
        float* o = out.row<float>(r) + h * latent_dim;
        std::fill_n(o, latent_dim, 0.0f);
        for (size_t k = 0; k < count; ++k) {
          const float p = prob[k] / total;
          const float* c = rows[k];
          for (int64_t d = 0; d < latent_dim; ++d) o[d] += p * c[d];
        }
      }
    }
  }
}

}  // namespace indexcache
