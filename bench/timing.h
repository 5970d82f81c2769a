// Wall-clock timing for the benchmark: a steady clock, and "warm up, repeat, take the median" for a
// callable. The median (not the mean) because a 2-core machine shared with builds has outliers.
#pragma once

#include <chrono>
#include <functional>
#include <vector>

namespace indexcache::bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Sample {
  double median = 0.0;  // seconds
  double min = 0.0;
  double max = 0.0;
  int reps = 0;
};

// Median/min/max of `seconds`; all zero when empty.
Sample Summarize(std::vector<double> seconds);

// Runs `fn` `warmup` times untimed, then `reps` times timed one by one.
Sample TimeRepeated(const std::function<void()>& fn, int warmup, int reps);

// Like TimeRepeated, but each timed repetition runs `fn` as many times as fit in about
// `min_seconds` (at least once), so microsecond calls are not drowned by clock resolution.
// The sample is per call.
Sample TimeBatched(const std::function<void()>& fn, int warmup, int reps, double min_seconds);

}  // namespace indexcache::bench
