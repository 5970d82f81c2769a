// A worker's prefix-cache keys (common/kv/cached_block_log.h) in its load report, for the router's
// prefix-aware placement.
#pragma once

#include <cstddef>

#include "common/kv/cached_block_log.h"
#include "indexcache/v1/internal.pb.h"

namespace indexcache {

// Keys one load report carries at most (8 bytes each, far below gRPC's 4 MB message limit); a cache
// with more is reported in part, which costs placements only.
inline constexpr size_t kMaxReportedCachedBlocks = size_t{1} << 18;

// Sets `load`'s cached_blocks from `report`; leaves it unset when the worker keeps no prefix cache.
void SetCachedBlocks(const CachedBlocksReport& report, ::indexcache::v1::WorkerLoad* load);

}  // namespace indexcache
