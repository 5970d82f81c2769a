// Host memory copy rate: the ceiling every host-staged transfer (a socket's kernel copies, a protobuf
// serialization, a staging buffer) is read against. One thread is the rate one connection's copies
// can reach; all threads is the machine's memory bandwidth.
#pragma once

#include <cstddef>

#include "bench/timing.h"

namespace indexcache::bench {

// Seconds per memcpy of `bytes` (fresh, page-touched buffers), split over `threads` OpenMP threads;
// 2 warm-ups, median of 7. min_seconds > 0 batches short copies (see TimeBatched). The memory
// traffic is 2 × bytes (read + write).
Sample TimeCopy(size_t bytes, int threads, double min_seconds);

}  // namespace indexcache::bench
