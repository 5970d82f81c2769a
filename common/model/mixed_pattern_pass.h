// Sequences with different IndexCache patterns in one forward pass (ForwardBatch::
// sequence_indexer_types: an adaptive pattern's short and long requests batched together, see
// pattern_schedule.h). Each layer runs Full for the rows whose pattern says so and Shared for the rest:
//
// - a layer every row runs alike takes the ordinary path (Full: the indexer over every row; Shared:
//   every row keeps the selection in force);
// - a layer only some rows run Full computes the indexer's projections, queries and keys for every
//   row, as a Full layer does, but writes only its Full rows' keys to the pool (the others' slots get
//   -1: their patterns never select from this layer), then scores only those rows: their queries and
//   head weights are gathered, IndexerTopK runs over their own sequences' keys, and their selections
//   are written back into their rows of a.topk, so every other row keeps the selection it reuses.
//
// So each row's result is the one its sequence gets in a batch of its own pattern; the indexer's
// scoring, the part that grows with the context, runs only for rows that need it. The subsets are
// planned on the host before the pass and uploaded once.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/backend/backend.h"
#include "common/backend/workspace.h"
#include "common/model/activations.h"
#include "common/model/model_config.h"

namespace indexcache {

class MixedPatternPass {
 public:
  // `sequence_types`: each sequence's pattern (num_layers entries each); token_seq and positions as in
  // ForwardBatch; `slots` each token's cache slot.
  static MixedPatternPass Plan(absl::Span<const std::vector<IndexerType>> sequence_types,
                               absl::Span<const int32_t> token_seq, absl::Span<const int32_t> positions,
                               absl::Span<const int32_t> slots, int32_t num_layers);

  // Per layer: Full where some row runs it Full (the layers whose indexer inputs the pass computes).
  const std::vector<IndexerType>& types() const { return types_; }
  // Whether only some of the rows run layer l Full: the layer's selection then comes from EnqueueTopK.
  bool partial(int32_t layer) const { return layer_subset_[layer] >= 0; }
  // Whether batch row `row` runs layer l Full.
  bool RowRunsFull(int64_t row, int32_t layer) const;

  // Takes the device tensors from `ws`, in the measuring carve and in the real one (as Carve does in
  // activations.h); `topk_cols` is the pass's selection width.
  void Carve(const ModelConfig& c, DType act, int64_t topk_cols, Workspace& ws);
  // Uploads the subsets (after the real carve).
  void Upload(Backend& be) const;
  // A partial layer's slot mapping for its index keys: each Full row's cache slot, -1 for the others.
  Tensor KeySlots(int32_t layer) const;
  // A partial layer, after its indexer queries and keys are in a (a.index_q, a.index_w, and the keys
  // in `key_pool`): the Full rows' selections into their rows of a.topk.
  void EnqueueTopK(Backend& be, int32_t layer, const Activations& a, const BatchLayout& layout, Tensor key_pool,
                   int32_t heads, float scale) const;

 private:
  struct Subset {
    int64_t offset = 0;        // into rows_/seq_/pos_
    int64_t rows = 0;
    int32_t max_context = 0;   // max over its rows of position + 1
  };

  std::vector<IndexerType> types_;
  std::vector<int32_t> layer_subset_;          // per layer: its Subset, -1 when every row runs it alike
  std::vector<Subset> subsets_;                // distinct sets of Full rows
  std::vector<int32_t> rows_, seq_, pos_;      // the subsets' batch rows, their sequences and positions
  std::vector<int32_t> key_slots_;             // [subsets, n]: per subset, KeySlots
  std::vector<std::vector<IndexerType>> row_types_;  // per sequence
  std::vector<int32_t> token_seq_;
  int64_t max_rows_ = 0;

  struct Device {
    Tensor rows, seq, pos;  // I32 copies of the subsets
    Tensor key_slots;       // I32 [subsets, n]
    Tensor q, w, topk;      // [m, IH·ID], [m, IH], I32 [m, topk_cols]: scratch for the largest subset
  } t_;
};

}  // namespace indexcache
