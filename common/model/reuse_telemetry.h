// Reuse-quality telemetry inside one forward pass (ForwardBatch::reuse_telemetry): each Shared layer
// that has indexer weights (ModelLoadOptions::shared_indexers) also runs its own indexer, and every
// measured row's overlap between the selection the layer reuses and the one it would have made is
// counted (reuse_overlap.h). Nothing it computes feeds the pass: outputs are those of an unsampled pass.
//
// Scope: a Shared layer keeps no index keys in the paged cache, and its keys come from hidden states
// that are not cached either, so its own indexer can score only keys computed in the same pass. A row
// is measured only when its sequence's whole context is in the pass — the sequence's tokens in the
// batch start at position 0 (a prompt's first chunk, or a whole prompt that fits one chunk) — and
// it sees more than index_topk keys. Later chunks, decode tokens and imported prompts are never
// measured; no overlap is ever computed against keys that are not the layer's own.
//
// The measured sequences' keys go to a scratch pool laid out like the paged cache (the cache's block
// size, blocks numbered from 0 in this pass), so the backend's IndexerTopK scores them exactly as a
// Full layer scores its pool.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/backend/backend.h"
#include "common/backend/workspace.h"
#include "common/model/activations.h"
#include "common/model/model_config.h"
#include "common/model/reuse_overlap.h"

namespace indexcache {

class ReuseTelemetryPass {
 public:
  // What a batch (positions, token_seq as in ForwardBatch) lets `layers` Shared layers measure.
  static ReuseTelemetryPass Plan(absl::Span<const int32_t> positions, absl::Span<const int32_t> token_seq,
                                 int32_t block_size, int32_t index_topk, int32_t layers);

  // No row to measure (or no layer): the pass runs nothing extra.
  bool empty() const { return rows_.empty() || layers_ == 0; }

  // Takes the device tensors from `ws`, in the measuring carve and in the real one (as Carve does in
  // activations.h); `topk_cols` is the pass's selection width.
  void Carve(const ModelConfig& c, DType act, int64_t topk_cols, Workspace& ws);
  // Uploads the plan (after the real carve).
  void Upload(Backend& be) const;
  // Measurement `slot` (0 ≤ slot < layers): a.index_q, a.index_w and a.index_k hold the layer's own
  // roped queries, head weights and normed roped keys; a.topk the selection it reuses.
  void Enqueue(Backend& be, int32_t slot, const Activations& a, int32_t heads, float scale) const;
  // After the pass: both selections of every slot's rows, one overlap per row added to
  // per_layer[layers[slot]].
  absl::Status Collect(Backend& be, absl::Span<const int32_t> layers, ReuseOverlapByLayer& per_layer) const;

 private:
  int32_t block_size_ = 0;
  int32_t layers_ = 0;
  int32_t max_context_ = 0;           // longest measured sequence
  int64_t pool_rows_ = 0;             // scratch pool slots
  int64_t max_blocks_ = 0;
  std::vector<int32_t> slots_;        // [n] scratch slot of each batch token, -1: not measured
  std::vector<int32_t> tables_;       // [sequences, max_blocks] scratch blocks of each measured sequence
  std::vector<int32_t> rows_;         // [m] batch rows measured
  std::vector<int32_t> seq_;          // [m] their row of tables_
  std::vector<int32_t> pos_;          // [m] their positions

  struct Device {
    Tensor slots, tables, rows, seq, pos;  // I32 copies of the plan
    Tensor pool;                           // [pool_rows, ID] keys
    Tensor q, w;                           // [m, IH·ID], [m, IH]: the measured rows' queries, head weights
    Tensor fresh, reused;                  // I32 [layers·m, topk_cols], slot-major
  } t_;
};

}  // namespace indexcache
