// The loopback TCP ceiling: one connection over 127.0.0.1, a sender thread writing `write_bytes` at a
// time and a receiver thread reading into a buffer of the same size, as a handoff transport that sends
// from host staging does. Both ends copy through the kernel, so this is the most a single-connection
// TCP handoff between two processes of one machine can move.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "bench/timing.h"

namespace indexcache::bench {

struct LoopbackTcpRate {
  uint64_t bytes = 0;        // per repetition
  size_t write_bytes = 0;    // per send() call (and per recv() buffer)
  Sample seconds;            // first byte sent until the receiver acknowledged the last (median of reps)
  double bytes_per_second = 0.0;  // bytes / seconds.median
};

// One untimed warm-up, then `reps` timed connections (a fresh connection each).
absl::StatusOr<LoopbackTcpRate> MeasureLoopbackTcp(uint64_t bytes, size_t write_bytes, int reps);

}  // namespace indexcache::bench
