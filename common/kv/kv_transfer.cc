#include "common/kv/kv_transfer.h"

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// The pool of (layer, kind) and the cache slots of `seq`'s positions [begin, begin + count).
absl::StatusOr<Tensor> PoolAndSlots(const PagedKvCache& cache, SequenceId seq, int32_t layer, KvRowKind kind,
                                    int32_t begin, int32_t count, std::vector<int32_t>& slots) {
  const KvCacheSpec& spec = cache.spec();
  if (layer < 0 || layer >= spec.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("layer %d out of range [0, %d)", layer, spec.num_layers));
  }
  if (kind == KvRowKind::kIndexKey && !spec.layer_has_index_keys[layer]) {
    return absl::InvalidArgumentError(absl::StrFormat("layer %d is Shared: it has no index keys", layer));
  }
  const std::vector<int32_t>& table = cache.BlockTable(seq);
  const int64_t capacity = static_cast<int64_t>(table.size()) * cache.block_size();
  if (begin < 0 || count < 0 || begin + static_cast<int64_t>(count) > capacity) {
    return absl::OutOfRangeError(absl::StrFormat("positions [%d, %d) of sequence %d exceed its %d reserved slots",
                                                 begin, begin + count, seq, capacity));
  }
  slots.resize(count);
  for (int32_t i = 0; i < count; ++i) {
    const int32_t pos = begin + i;
    slots[i] = table[pos / cache.block_size()] * cache.block_size() + pos % cache.block_size();
  }
  return kind == KvRowKind::kLatent ? cache.latent_pool(layer) : cache.index_key_pool(layer);
}

// A device scratch buffer holding `slots` as an I32 column and room for [count, width] floats.
struct Staging {
  Buffer buffer;
  Tensor slots;
  Tensor rows;
};

absl::StatusOr<Staging> Stage(Backend& backend, const std::vector<int32_t>& slots, int32_t width) {
  Staging s;
  const int64_t count = static_cast<int64_t>(slots.size());
  const size_t slot_bytes = (count * sizeof(int32_t) + 255) / 256 * 256;
  ASSIGN_OR_RETURN(s.buffer, backend.Allocate(slot_bytes + count * width * sizeof(float)));
  s.slots = Tensor::Matrix(s.buffer.data(), DType::kI32, count, 1);
  s.rows = Tensor::Matrix(static_cast<char*>(s.buffer.data()) + slot_bytes, DType::kF32, count, width);
  backend.Upload(slots.data(), s.slots);
  return s;
}

}  // namespace

int32_t KvRowWidth(const KvCacheSpec& spec, KvRowKind kind) {
  return kind == KvRowKind::kLatent ? spec.latent_dim : spec.index_key_dim;
}

absl::StatusOr<std::vector<float>> ExportKvRows(Backend& backend, const PagedKvCache& cache, SequenceId seq,
                                                int32_t layer, KvRowKind kind, int32_t begin, int32_t count) {
  std::vector<int32_t> slots;
  ASSIGN_OR_RETURN(Tensor pool, PoolAndSlots(cache, seq, layer, kind, begin, count, slots));
  std::vector<float> rows(static_cast<size_t>(count) * pool.cols);
  if (count == 0) return rows;
  ASSIGN_OR_RETURN(Staging staging, Stage(backend, slots, static_cast<int32_t>(pool.cols)));
  backend.GatherRows(pool, staging.slots, staging.rows);
  RETURN_IF_ERROR(backend.Download(staging.rows, rows.data()));
  return rows;
}

absl::Status ImportKvRows(Backend& backend, PagedKvCache& cache, SequenceId seq, int32_t layer, KvRowKind kind,
                          int32_t begin, int32_t count, const float* rows) {
  std::vector<int32_t> slots;
  ASSIGN_OR_RETURN(Tensor pool, PoolAndSlots(cache, seq, layer, kind, begin, count, slots));
  if (count == 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(Staging staging, Stage(backend, slots, static_cast<int32_t>(pool.cols)));
  backend.Upload(rows, staging.rows);
  backend.WriteCacheRows(staging.rows, staging.slots, pool);
  return backend.Synchronize();
}

}  // namespace indexcache
