// The unit the prefill → decode handoff moves: positions [begin, end) of one sequence, with the MLA
// latent rows of every layer and the index-key rows of the Full layers only (Shared layers have
// none), exactly as the pools store them — BF16 on CUDA, F32 on the CPU; nothing is widened or
// rounded on the way. A segment's rows lie in one staging area as (layer, kind) slices in layer order,
// latent before index keys, each [count, width] dense: host memory (pinned on CUDA), or device memory
// for a transport that sends from the GPU (RowsMemory::kDevice: NCCL).
//
// A segment is filled layer by layer while the forward pass that computes its positions runs:
//
//   engine thread:  KvExporter::Begin        host staging area, the positions' slot runs (before
//                                            the pass)
//                   KvExporter::ExportLayer  after the pass enqueued layer l's cache writes: copy
//                                            l's rows from the pools' slots straight to the area
//                                            (copy stream, waits for nothing after it; no kernel)
//                   KvExporter::End          after the pass: layers it never reached fail
//   sender thread:  KvSegment::WaitFor(i)    slice i's layer has landed; bytes(slice) reads it in place
//
// so a sender ships layer l while layers l+1… still compute, and what is left to send after the pass
// is about one layer's rows. KvSegment is a handle: the engine and the sender share one segment's
// state. Staging areas are pooled and reused once the last handle is gone, so steady prefill
// allocates nothing. On the receiving side KvImporter copies received rows, still as stored, from the
// host memory they landed in into the pools.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/kv/landed_rows.h"
#include "common/kv/paged_kv_cache.h"

namespace indexcache {

enum class KvRowKind : uint8_t { kLatent, kIndexKey };

// Width of one row of `kind` (latent_dim or index_key_dim).
int32_t KvRowWidth(const KvCacheSpec& spec, KvRowKind kind);
// Bytes of `count` rows of `kind` as the pools store them.
size_t KvRowBytes(const KvCacheSpec& spec, KvRowKind kind, int32_t count);

// One (layer, kind) run of a segment: its rows, `bytes` long at `offset` in the segment's host area.
struct KvSlice {
  int32_t layer = 0;
  KvRowKind kind = KvRowKind::kLatent;
  size_t offset = 0;
  size_t bytes = 0;
};

class KvSegment {
 public:
  KvSegment() = default;  // empty: no positions

  int32_t begin() const;
  int32_t end() const;
  int32_t count() const { return end() - begin(); }
  RowsMemory memory() const;
  DType dtype() const;
  const std::vector<KvSlice>& slices() const;
  size_t bytes() const;

  // Blocks until slice `index`'s rows are in the staging area (any thread); the export's error if
  // the pass that computes them failed or its copy did.
  absl::Status WaitFor(size_t index) const;
  // Every slice.
  absl::Status Wait() const;
  // A slice's rows, after WaitFor, where they lie: on a kDevice segment a view of device memory,
  // which only a transport that sends from the GPU reads.
  std::string_view bytes(const KvSlice& slice) const;

 private:
  friend class KvExporter;
  struct State;
  std::shared_ptr<State> state_;
};

class KvStagingPool;

// Exports segments; used on the thread that drives the backend (the engine loop).
class KvExporter {
 public:
  KvExporter(Backend& backend, const PagedKvCache& cache);
  ~KvExporter();

  // A segment of positions [begin, end) of `seq`, whose slots are reserved, staged in `memory`,
  // before the pass that writes them: the staging area and the slot runs are ready, no row is copied
  // yet. `index_key_layers` (one flag per layer) names the layers whose index keys it carries — the
  // Full layers of the sequence's own pattern, when the cache holds pools for more (an adaptive
  // pattern); empty: every layer with an index-key pool.
  absl::StatusOr<KvSegment> Begin(SequenceId seq, int32_t begin, int32_t end,
                                  RowsMemory memory = RowsMemory::kHost,
                                  const std::vector<bool>& index_key_layers = {});
  // After the pass enqueued layer `layer`'s cache writes: enqueues that layer's copies.
  void ExportLayer(const KvSegment& segment, int32_t layer);
  // After the pass: the layers it did not export fail their waiters with `status` (an error when the
  // pass failed; OK when every layer was exported).
  void End(const KvSegment& segment, const absl::Status& status);
  // Positions already computed: Begin, every layer, End.
  absl::StatusOr<KvSegment> Export(SequenceId seq, int32_t begin, int32_t end,
                                   RowsMemory memory = RowsMemory::kHost,
                                   const std::vector<bool>& index_key_layers = {});
  // A segment of positions [begin, end) that could not start: waiting on any of its slices returns
  // `why`.
  KvSegment Failed(int32_t begin, int32_t end, const absl::Status& why) const;

 private:
  // The segment's slices in layer order, no staging yet.
  KvSegment Layout(int32_t begin, int32_t end, RowsMemory memory, const std::vector<bool>& index_key_layers) const;

  Backend& backend_;
  const PagedKvCache& cache_;
  std::shared_ptr<KvStagingPool> host_pool_;
  std::shared_ptr<KvStagingPool> device_pool_;
};

// Writes received rows into the pools; used on the thread that drives the backend.
class KvImporter {
 public:
  KvImporter(Backend& backend, PagedKvCache& cache) : backend_(backend), cache_(cache) {}

  // `rows`: [count, width] of `kind` as the pools store them, in host or device memory, for positions
  // [begin, begin + count) of `seq`, which must be reserved. Copied where they lie into the pool's blocks (one copy per run
  // of consecutive slots, no kernel: Backend::UploadRows), in order with the ops around it; the copy
  // holds rows.keep until it has read them.
  absl::Status Import(SequenceId seq, int32_t layer, KvRowKind kind, int32_t begin, int32_t count, LandedRows rows);

 private:
  Backend& backend_;
  PagedKvCache& cache_;
};

}  // namespace indexcache
