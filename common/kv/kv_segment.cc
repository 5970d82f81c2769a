#include "common/kv/kv_segment.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// The cache slots of `seq`'s positions [begin, begin + count), after checking they are reserved, as
// runs of consecutive slots, each with its first position's index (from `begin`) as host_offset.
// Positions within a block are consecutive slots, and so are adjacent blocks with adjacent ids (the
// allocator hands a sequence's blocks out ascending): a chunk of positions is usually one run, one
// copy.
absl::StatusOr<std::vector<RowRun>> SlotRuns(const PagedKvCache& cache, SequenceId seq, int32_t begin, int32_t count) {
  const std::vector<int32_t>& table = cache.BlockTable(seq);
  const int64_t capacity = static_cast<int64_t>(table.size()) * cache.block_size();
  if (begin < 0 || count < 0 || begin + static_cast<int64_t>(count) > capacity) {
    return absl::OutOfRangeError(absl::StrFormat("positions [%d, %d) of sequence %d exceed its %d reserved slots",
                                                 begin, int64_t{begin} + count, seq, capacity));
  }
  std::vector<RowRun> runs;
  for (int32_t i = 0; i < count; ++i) {
    const int32_t pos = begin + i;
    const int64_t slot = int64_t{table[pos / cache.block_size()]} * cache.block_size() + pos % cache.block_size();
    if (!runs.empty() && runs.back().row + runs.back().rows == slot) {
      ++runs.back().rows;
    } else {
      runs.push_back(RowRun{slot, 1, static_cast<size_t>(i)});
    }
  }
  return runs;
}

// `runs` (host_offset in rows) with host offsets in bytes: rows of `row_bytes` from `base`.
std::vector<RowRun> InBytes(const std::vector<RowRun>& runs, size_t base, size_t row_bytes) {
  std::vector<RowRun> bytes = runs;
  for (RowRun& run : bytes) run.host_offset = base + run.host_offset * row_bytes;
  return bytes;
}

Tensor Pool(const PagedKvCache& cache, int32_t layer, KvRowKind kind) {
  return kind == KvRowKind::kLatent ? cache.latent_pool(layer) : cache.index_key_pool(layer);
}

absl::Status CheckLayer(const KvCacheSpec& spec, int32_t layer, KvRowKind kind) {
  if (layer < 0 || layer >= spec.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("layer %d out of range [0, %d)", layer, spec.num_layers));
  }
  if (kind == KvRowKind::kIndexKey && !spec.layer_has_index_keys[layer]) {
    return absl::InvalidArgumentError(absl::StrFormat("layer %d is Shared: it has no index keys", layer));
  }
  return absl::OkStatus();
}

}  // namespace

int32_t KvRowWidth(const KvCacheSpec& spec, KvRowKind kind) {
  return kind == KvRowKind::kLatent ? spec.latent_dim : spec.index_key_dim;
}

size_t KvRowBytes(const KvCacheSpec& spec, KvRowKind kind, int32_t count) {
  return static_cast<size_t>(count) * KvRowWidth(spec, kind) * DTypeSize(spec.dtype);
}

// ---- staging --------------------------------------------------------------------------------

// The area a segment's rows are copied to (host, or device memory for a transport that sends from
// the GPU), and the copies into it (one per slice) that must end before the area is reused.
struct KvStaging {
  HostBuffer host;
  Buffer device;
  std::vector<std::unique_ptr<AsyncHostCopy>> copies;

  char* data() const { return static_cast<char*>(host.data() != nullptr ? host.data() : device.data()); }
  size_t bytes() const { return host.data() != nullptr ? host.bytes() : device.bytes(); }
};

// Staging areas of one kind of memory not in use. A segment's last handle returns its area from
// whichever thread drops it.
class KvStagingPool {
 public:
  explicit KvStagingPool(RowsMemory memory) : memory_(memory) {}

  RowsMemory memory() const { return memory_; }

  // An area of at least `bytes`: a free one that is large enough, else a new one (the free ones too
  // small for this export are dropped: exports tend to one size).
  absl::StatusOr<std::unique_ptr<KvStaging>> Take(Backend& backend, size_t bytes) {
    std::unique_ptr<KvStaging> staging;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto fits = std::find_if(free_.begin(), free_.end(), [&](const auto& s) { return s->bytes() >= bytes; });
      if (fits != free_.end()) {
        staging = std::move(*fits);
        free_.erase(fits);
      } else {
        free_.clear();
      }
    }
    if (staging != nullptr) {
      // The area's last copies must be over before new rows are copied into it.
      for (const auto& copy : staging->copies) {
        if (copy != nullptr) RETURN_IF_ERROR(copy->Wait());
      }
      staging->copies.clear();
      return staging;
    }
    staging = std::make_unique<KvStaging>();
    if (memory_ == RowsMemory::kDevice) {
      ASSIGN_OR_RETURN(staging->device, backend.Allocate(bytes));
    } else {
      ASSIGN_OR_RETURN(staging->host, backend.AllocateHost(bytes));
    }
    return staging;
  }

  void Give(std::unique_ptr<KvStaging> staging) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(staging));
  }

 private:
  const RowsMemory memory_;
  std::mutex mu_;
  std::vector<std::unique_ptr<KvStaging>> free_;
};

// ---- KvSegment ------------------------------------------------------------------------------

// What the engine thread (ExportLayer, End) and the sender (WaitFor) share.
struct KvSegment::State {
  ~State() {
    if (staging != nullptr) pool->Give(std::move(staging));
  }

  int32_t begin = 0;
  int32_t end = 0;
  DType dtype = DType::kF32;
  std::vector<KvSlice> slices;
  std::shared_ptr<KvStagingPool> pool;
  std::unique_ptr<KvStaging> staging;  // null when the segment has no positions
  std::vector<RowRun> slot_runs;       // the positions' slots (SlotRuns)

  std::mutex mu;
  std::condition_variable landed;
  std::vector<bool> exported;  // per layer: its slices' copies are enqueued (staging->copies)   guarded by mu
  absl::Status failure;        // set by End for the layers never exported                  guarded by mu
};

int32_t KvSegment::begin() const { return state_ == nullptr ? 0 : state_->begin; }
int32_t KvSegment::end() const { return state_ == nullptr ? 0 : state_->end; }
RowsMemory KvSegment::memory() const { return state_ == nullptr ? RowsMemory::kHost : state_->pool->memory(); }
DType KvSegment::dtype() const { return state_ == nullptr ? DType::kF32 : state_->dtype; }

const std::vector<KvSlice>& KvSegment::slices() const {
  static const std::vector<KvSlice> kNone;
  return state_ == nullptr ? kNone : state_->slices;
}

size_t KvSegment::bytes() const {
  size_t total = 0;
  for (const KvSlice& s : slices()) total += s.bytes;
  return total;
}

absl::Status KvSegment::WaitFor(size_t index) const {
  if (state_ == nullptr) return absl::OkStatus();
  State& s = *state_;
  if (s.staging == nullptr) {
    // No positions (nothing to wait for), or a segment that could not start (its failure).
    std::lock_guard<std::mutex> lock(s.mu);
    return s.failure;
  }
  const int32_t layer = s.slices.at(index).layer;
  AsyncHostCopy* copy = nullptr;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    s.landed.wait(lock, [&] { return s.exported[layer] || !s.failure.ok(); });
    if (!s.exported[layer]) return s.failure;
    copy = s.staging->copies[index].get();
  }
  return copy->Wait();
}

absl::Status KvSegment::Wait() const {
  for (size_t i = 0; i < slices().size(); ++i) RETURN_IF_ERROR(WaitFor(i));
  return absl::OkStatus();
}

std::string_view KvSegment::bytes(const KvSlice& slice) const {
  return std::string_view(state_->staging->data() + slice.offset, slice.bytes);
}

// ---- KvExporter -----------------------------------------------------------------------------

KvExporter::KvExporter(Backend& backend, const PagedKvCache& cache)
    : backend_(backend),
      cache_(cache),
      host_pool_(std::make_shared<KvStagingPool>(RowsMemory::kHost)),
      device_pool_(std::make_shared<KvStagingPool>(RowsMemory::kDevice)) {}

KvExporter::~KvExporter() = default;

KvSegment KvExporter::Layout(int32_t begin, int32_t end, RowsMemory memory,
                             const std::vector<bool>& index_key_layers) const {
  const KvCacheSpec& spec = cache_.spec();
  auto state = std::make_shared<KvSegment::State>();
  state->begin = begin;
  state->end = end;
  state->dtype = spec.dtype;
  state->pool = memory == RowsMemory::kDevice ? device_pool_ : host_pool_;
  size_t offset = 0;
  for (int32_t layer = 0; layer < spec.num_layers; ++layer) {
    for (KvRowKind kind : {KvRowKind::kLatent, KvRowKind::kIndexKey}) {
      const bool has_keys = index_key_layers.empty() ? spec.layer_has_index_keys[layer] : index_key_layers[layer];
      if (kind == KvRowKind::kIndexKey && !has_keys) continue;
      const size_t bytes = KvRowBytes(spec, kind, end - begin);
      state->slices.push_back(KvSlice{layer, kind, offset, bytes});
      offset += bytes;
    }
  }
  KvSegment segment;
  segment.state_ = std::move(state);
  return segment;
}

absl::StatusOr<KvSegment> KvExporter::Begin(SequenceId seq, int32_t begin, int32_t end, RowsMemory memory,
                                            const std::vector<bool>& index_key_layers) {
  const KvCacheSpec& spec = cache_.spec();
  if (!index_key_layers.empty()) {
    if (static_cast<int32_t>(index_key_layers.size()) != spec.num_layers) {
      return absl::InvalidArgumentError(absl::StrFormat("index-key layers name %d layers, the cache has %d",
                                                        index_key_layers.size(), spec.num_layers));
    }
    for (int32_t layer = 0; layer < spec.num_layers; ++layer) {
      if (index_key_layers[layer]) RETURN_IF_ERROR(CheckLayer(spec, layer, KvRowKind::kIndexKey));
    }
  }
  ASSIGN_OR_RETURN(std::vector<RowRun> runs, SlotRuns(cache_, seq, begin, end - begin));
  KvSegment segment = Layout(begin, end, memory, index_key_layers);
  if (end == begin) return segment;

  KvSegment::State* state = segment.state_.get();
  ASSIGN_OR_RETURN(state->staging, state->pool->Take(backend_, segment.bytes()));
  state->staging->copies.resize(state->slices.size());
  state->exported.assign(cache_.spec().num_layers, false);
  state->slot_runs = std::move(runs);
  return segment;
}

void KvExporter::ExportLayer(const KvSegment& segment, int32_t layer) {
  KvSegment::State& s = *segment.state_;
  if (s.staging == nullptr) return;
  // Each of the layer's slices (latent, then index keys on a Full layer) straight from the pool's
  // slots to the host: copies only, no gather kernel among the prefill's.
  std::vector<std::pair<size_t, std::unique_ptr<AsyncHostCopy>>> copies;
  absl::Status failed;
  for (size_t i = 0; i < s.slices.size() && failed.ok(); ++i) {
    const KvSlice& slice = s.slices[i];
    if (slice.layer != layer) continue;
    absl::StatusOr<std::unique_ptr<AsyncHostCopy>> copy =
        backend_.DownloadRowsAsync(Pool(cache_, slice.layer, slice.kind),
                                   InBytes(s.slot_runs, slice.offset, KvRowBytes(cache_.spec(), slice.kind, 1)),
                                   s.staging->data());
    if (copy.ok()) {
      copies.emplace_back(i, *std::move(copy));
    } else {
      failed = copy.status();
    }
  }
  if (copies.empty() && failed.ok()) return;
  std::lock_guard<std::mutex> lock(s.mu);
  for (auto& [index, copy] : copies) s.staging->copies[index] = std::move(copy);
  if (!failed.ok()) {
    if (s.failure.ok()) s.failure = Annotate(failed, absl::StrFormat("exporting layer %d's cache rows", layer));
  } else {
    s.exported[layer] = true;
  }
  s.landed.notify_all();
}

void KvExporter::End(const KvSegment& segment, const absl::Status& status) {
  KvSegment::State& s = *segment.state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.failure.ok()) {
    s.failure = status.ok() ? absl::InternalError("the forward pass did not export every layer of the segment")
                            : status;
  }
  s.landed.notify_all();
}

KvSegment KvExporter::Failed(int32_t begin, int32_t end, const absl::Status& why) const {
  KvSegment segment = Layout(begin, end, RowsMemory::kHost, {});
  segment.state_->failure = why;
  return segment;
}

absl::StatusOr<KvSegment> KvExporter::Export(SequenceId seq, int32_t begin, int32_t end, RowsMemory memory,
                                             const std::vector<bool>& index_key_layers) {
  ASSIGN_OR_RETURN(KvSegment segment, Begin(seq, begin, end, memory, index_key_layers));
  for (int32_t layer = 0; layer < cache_.spec().num_layers; ++layer) ExportLayer(segment, layer);
  End(segment, absl::OkStatus());
  return segment;
}

// ---- KvImporter -----------------------------------------------------------------------------

absl::Status KvImporter::Import(SequenceId seq, int32_t layer, KvRowKind kind, int32_t begin, int32_t count,
                                LandedRows rows) {
  const KvCacheSpec& spec = cache_.spec();
  RETURN_IF_ERROR(CheckLayer(spec, layer, kind));
  if (rows.size != KvRowBytes(spec, kind, count)) {
    return absl::InvalidArgumentError(absl::StrFormat("%d rows of width %d in %s take %d bytes, not %d", count,
                                                      KvRowWidth(spec, kind), DTypeName(spec.dtype),
                                                      KvRowBytes(spec, kind, count), rows.size));
  }
  ASSIGN_OR_RETURN(const std::vector<RowRun> runs, SlotRuns(cache_, seq, begin, count));
  if (count == 0) return absl::OkStatus();
  backend_.UploadRows(rows.data, InBytes(runs, 0, KvRowBytes(spec, kind, 1)), Pool(cache_, layer, kind),
                      std::move(rows.keep));
  return absl::OkStatus();
}

}  // namespace indexcache
