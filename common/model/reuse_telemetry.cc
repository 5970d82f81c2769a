#include "common/model/reuse_telemetry.h"

#include <algorithm>

#include "common/util/status_macros.h"

namespace indexcache {

ReuseTelemetryPass ReuseTelemetryPass::Plan(absl::Span<const int32_t> positions, absl::Span<const int32_t> token_seq,
                                            int32_t block_size, int32_t index_topk, int32_t layers) {
  ReuseTelemetryPass p;
  p.block_size_ = block_size;
  p.layers_ = layers;
  const int64_t n = static_cast<int64_t>(positions.size());
  p.slots_.assign(n, -1);
  std::vector<std::vector<int32_t>> tables;
  int32_t next_block = 0;
  for (int64_t begin = 0; begin < n;) {
    int64_t end = begin;
    while (end < n && token_seq[end] == token_seq[begin]) ++end;
    // The whole context is here only if the sequence's tokens are positions 0, 1, … in order.
    bool whole = true;
    for (int64_t i = begin; i < end; ++i) whole = whole && positions[i] == i - begin;
    const int32_t length = static_cast<int32_t>(end - begin);
    if (whole && length > index_topk) {
      const int32_t blocks = (length + block_size - 1) / block_size;
      std::vector<int32_t>& table = tables.emplace_back(blocks);
      for (int32_t j = 0; j < blocks; ++j) table[j] = next_block + j;
      for (int64_t i = begin; i < end; ++i) {
        const int32_t pos = positions[i];
        p.slots_[i] = (next_block + pos / block_size) * block_size + pos % block_size;
        if (pos + 1 > index_topk) {
          p.rows_.push_back(static_cast<int32_t>(i));
          p.seq_.push_back(static_cast<int32_t>(tables.size() - 1));
          p.pos_.push_back(pos);
        }
      }
      next_block += blocks;
      p.max_context_ = std::max(p.max_context_, length);
      p.max_blocks_ = std::max<int64_t>(p.max_blocks_, blocks);
    }
    begin = end;
  }
  p.pool_rows_ = int64_t{next_block} * block_size;
  p.tables_.assign(tables.size() * p.max_blocks_, 0);
  for (size_t s = 0; s < tables.size(); ++s) std::copy(tables[s].begin(), tables[s].end(), p.tables_.begin() + s * p.max_blocks_);
  return p;
}

void ReuseTelemetryPass::Carve(const ModelConfig& c, DType act, int64_t topk_cols, Workspace& ws) {
  const int64_t n = static_cast<int64_t>(slots_.size()), m = static_cast<int64_t>(rows_.size());
  const int64_t sequences = static_cast<int64_t>(tables_.size()) / max_blocks_;
  t_.slots = ws.Take(DType::kI32, n, 1);
  t_.tables = ws.Take(DType::kI32, sequences, max_blocks_);
  t_.rows = ws.Take(DType::kI32, m, 1);
  t_.seq = ws.Take(DType::kI32, m, 1);
  t_.pos = ws.Take(DType::kI32, m, 1);
  t_.pool = ws.Take(act, pool_rows_, c.index_head_dim);
  t_.q = ws.Take(act, m, int64_t{c.index_n_heads} * c.index_head_dim);
  t_.w = ws.Take(act, m, c.index_n_heads);
  t_.fresh = ws.Take(DType::kI32, layers_ * m, topk_cols);
  t_.reused = ws.Take(DType::kI32, layers_ * m, topk_cols);
}

void ReuseTelemetryPass::Upload(Backend& be) const {
  be.Upload(slots_.data(), t_.slots);
  be.Upload(tables_.data(), t_.tables);
  be.Upload(rows_.data(), t_.rows);
  be.Upload(seq_.data(), t_.seq);
  be.Upload(pos_.data(), t_.pos);
}

void ReuseTelemetryPass::Enqueue(Backend& be, int32_t slot, const Activations& a, int32_t heads, float scale) const {
  const int64_t m = static_cast<int64_t>(rows_.size());
  // Every measured sequence's keys into the scratch pool; other tokens' slots are -1 and write nothing.
  be.WriteCacheRows(a.index_k, t_.slots, t_.pool);
  be.GatherRows(a.index_q, t_.rows, t_.q);
  be.GatherRows(a.index_w, t_.rows, t_.w);
  const BatchLayout layout{t_.seq, t_.pos, Tensor{}, t_.tables, block_size_, max_context_};
  be.IndexerTopK(t_.q, t_.w, heads, t_.pool, layout, scale, t_.fresh.Rows(slot * m, m));
  be.GatherRows(a.topk, t_.rows, t_.reused.Rows(slot * m, m));
}

absl::Status ReuseTelemetryPass::Collect(Backend& be, absl::Span<const int32_t> layers,
                                         ReuseOverlapByLayer& per_layer) const {
  const int64_t m = static_cast<int64_t>(rows_.size()), cols = t_.fresh.cols;
  std::vector<int32_t> fresh(static_cast<size_t>(layers_ * m * cols)), reused(fresh.size());
  RETURN_IF_ERROR(be.Download(t_.fresh, fresh.data()));
  RETURN_IF_ERROR(be.Download(t_.reused, reused.data()));
  std::vector<int64_t> mark(static_cast<size_t>(max_context_), -1);
  for (int32_t slot = 0; slot < layers_; ++slot) {
    const int32_t layer = layers[slot];
    if (per_layer.size() <= static_cast<size_t>(layer)) per_layer.resize(layer + 1);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t row = slot * m + r;
      const absl::Span<const int32_t> reused_row(reused.data() + row * cols, cols);
      const absl::Span<const int32_t> fresh_row(fresh.data() + row * cols, cols);
      per_layer[layer].Add(RowOverlap(reused_row, fresh_row, row, mark));
    }
  }
  return absl::OkStatus();
}

}  // namespace indexcache
