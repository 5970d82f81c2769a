#include "common/model/mixed_pattern_pass.h"

#include <algorithm>

namespace indexcache {

MixedPatternPass MixedPatternPass::Plan(absl::Span<const std::vector<IndexerType>> sequence_types,
                                        absl::Span<const int32_t> token_seq, absl::Span<const int32_t> positions,
                                        absl::Span<const int32_t> slots, int32_t num_layers) {
  MixedPatternPass p;
  p.row_types_.assign(sequence_types.begin(), sequence_types.end());
  p.token_seq_.assign(token_seq.begin(), token_seq.end());
  p.types_.assign(num_layers, IndexerType::kShared);
  p.layer_subset_.assign(num_layers, -1);
  const int64_t n = static_cast<int64_t>(token_seq.size());
  std::vector<int32_t> full_rows;
  for (int32_t l = 0; l < num_layers; ++l) {
    full_rows.clear();
    for (int64_t i = 0; i < n; ++i) {
      if (p.RowRunsFull(i, l)) full_rows.push_back(static_cast<int32_t>(i));
    }
    if (!full_rows.empty()) p.types_[l] = IndexerType::kFull;
    if (full_rows.empty() || static_cast<int64_t>(full_rows.size()) == n) continue;
    // Layers whose Full rows are the same set share one subset (a pattern's run of Full layers).
    for (size_t s = 0; s < p.subsets_.size() && p.layer_subset_[l] < 0; ++s) {
      const Subset& subset = p.subsets_[s];
      if (subset.rows == static_cast<int64_t>(full_rows.size()) &&
          std::equal(full_rows.begin(), full_rows.end(), p.rows_.begin() + subset.offset)) {
        p.layer_subset_[l] = static_cast<int32_t>(s);
      }
    }
    if (p.layer_subset_[l] >= 0) continue;
    Subset subset{.offset = static_cast<int64_t>(p.rows_.size()), .rows = static_cast<int64_t>(full_rows.size()),
                  .max_context = 0};
    const size_t key_slots_at = p.key_slots_.size();
    p.key_slots_.resize(key_slots_at + n, -1);
    for (int32_t row : full_rows) {
      p.key_slots_[key_slots_at + row] = slots[row];
      p.rows_.push_back(row);
      p.seq_.push_back(token_seq[row]);
      p.pos_.push_back(positions[row]);
      subset.max_context = std::max(subset.max_context, positions[row] + 1);
    }
    p.max_rows_ = std::max(p.max_rows_, subset.rows);
    p.layer_subset_[l] = static_cast<int32_t>(p.subsets_.size());
    p.subsets_.push_back(subset);
  }
  return p;
}

bool MixedPatternPass::RowRunsFull(int64_t row, int32_t layer) const {
  return row_types_[token_seq_[row]][layer] == IndexerType::kFull;
}

void MixedPatternPass::Carve(const ModelConfig& c, DType act, int64_t topk_cols, Workspace& ws) {
  const int64_t all = static_cast<int64_t>(rows_.size());
  t_.rows = ws.Take(DType::kI32, all, 1);
  t_.seq = ws.Take(DType::kI32, all, 1);
  t_.pos = ws.Take(DType::kI32, all, 1);
  t_.key_slots = ws.Take(DType::kI32, static_cast<int64_t>(subsets_.size()), static_cast<int64_t>(token_seq_.size()));
  t_.q = ws.Take(act, max_rows_, int64_t{c.index_n_heads} * c.index_head_dim);
  t_.w = ws.Take(act, max_rows_, c.index_n_heads);
  t_.topk = ws.Take(DType::kI32, max_rows_, topk_cols);
}

void MixedPatternPass::Upload(Backend& be) const {
  if (rows_.empty()) return;
  be.Upload(rows_.data(), t_.rows);
  be.Upload(seq_.data(), t_.seq);
  be.Upload(pos_.data(), t_.pos);
  be.Upload(key_slots_.data(), t_.key_slots);
}

Tensor MixedPatternPass::KeySlots(int32_t layer) const {
  // One subset's row of key_slots, as the [n, 1] column WriteCacheRows takes.
  return Tensor::Matrix(t_.key_slots.Rows(layer_subset_[layer], 1).data, DType::kI32,
                        static_cast<int64_t>(token_seq_.size()), 1);
}

void MixedPatternPass::EnqueueTopK(Backend& be, int32_t layer, const Activations& a, const BatchLayout& layout,
                                   Tensor key_pool, int32_t heads, float scale) const {
  const Subset& s = subsets_[layer_subset_[layer]];
  const Tensor rows = t_.rows.Rows(s.offset, s.rows);
  const Tensor q = t_.q.Rows(0, s.rows), w = t_.w.Rows(0, s.rows), topk = t_.topk.Rows(0, s.rows);
  be.GatherRows(a.index_q, rows, q);
  be.GatherRows(a.index_w, rows, w);
  // The subset's rows keep their sequences' rows of the batch's block tables.
  const BatchLayout subset{t_.seq.Rows(s.offset, s.rows), t_.pos.Rows(s.offset, s.rows), Tensor{},
                           layout.block_tables, layout.block_size, s.max_context};
  be.IndexerTopK(q, w, heads, key_pool, subset, scale, topk);
  // Scattered into a.topk's rows: WriteCacheRows writes row r of its source to row rows[r].
  be.WriteCacheRows(topk, rows, a.topk);
}

}  // namespace indexcache
