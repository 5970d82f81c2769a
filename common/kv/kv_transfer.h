// Moving a sequence's cache rows between a PagedKvCache and dense host arrays: what the prefill →
// decode handoff ships. Rows are addressed by (layer, kind, positions); kind LATENT is the MLA latent
// row of any layer, INDEX_KEY the indexer key of a Full layer (Shared layers have none to move).
// The host side is always float32, whatever the pools store (BF16 on CUDA: widened on export — exact —
// and rounded on import, which is exact for rows a BF16 cache exported).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/kv/paged_kv_cache.h"

namespace indexcache {

enum class KvRowKind : uint8_t { kLatent, kIndexKey };

// Width of one row of `kind` (latent_dim or index_key_dim).
int32_t KvRowWidth(const KvCacheSpec& spec, KvRowKind kind);

// Positions [begin, begin + count) of `seq`, `layer`, as [count, width] floats.
absl::StatusOr<std::vector<float>> ExportKvRows(Backend& backend, const PagedKvCache& cache, SequenceId seq,
                                                int32_t layer, KvRowKind kind, int32_t begin, int32_t count);

// Writes [count, width] floats into positions [begin, begin + count) of `seq`, `layer`. The positions
// must already be reserved.
absl::Status ImportKvRows(Backend& backend, PagedKvCache& cache, SequenceId seq, int32_t layer, KvRowKind kind,
                          int32_t begin, int32_t count, const float* rows);

}  // namespace indexcache
