#include "bench/timing.h"

#include <algorithm>

namespace indexcache::bench {

Sample Summarize(std::vector<double> seconds) {
  Sample s;
  if (seconds.empty()) return s;
  std::sort(seconds.begin(), seconds.end());
  const size_t n = seconds.size();
  s.median = n % 2 == 1 ? seconds[n / 2] : 0.5 * (seconds[n / 2 - 1] + seconds[n / 2]);
  s.min = seconds.front();
  s.max = seconds.back();
  s.reps = static_cast<int>(n);
  return s;
}

Sample TimeRepeated(const std::function<void()>& fn, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> seconds;
  for (int i = 0; i < reps; ++i) {
    const double start = NowSeconds();
    fn();
    seconds.push_back(NowSeconds() - start);
  }
  return Summarize(std::move(seconds));
}

Sample TimeBatched(const std::function<void()>& fn, int warmup, int reps, double min_seconds) {
  for (int i = 0; i < warmup; ++i) fn();
  // Calibrate the inner count on one call.
  const double start = NowSeconds();
  fn();
  const double one = std::max(NowSeconds() - start, 1e-9);
  const int inner = std::max(1, static_cast<int>(min_seconds / one));
  std::vector<double> seconds;
  for (int i = 0; i < reps; ++i) {
    const double t0 = NowSeconds();
    for (int j = 0; j < inner; ++j) fn();
    seconds.push_back((NowSeconds() - t0) / inner);
  }
  return Summarize(std::move(seconds));
}

}  // namespace indexcache::bench
