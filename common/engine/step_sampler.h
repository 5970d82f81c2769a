// Which engine steps carry reuse telemetry (ForwardBatch::reuse_telemetry): a share `rate` of the
// steps offered, evenly spaced and decided by a counter alone — offer i (from 0) is taken when
// ⌊(i+1)·rate⌋ > ⌊i·rate⌋ — so after N offers the share taken is within 1/N of the rate, and a test
// drives it exactly (rate 1: every offer; 0: none). No clock, no random source. The first offer taken
// is the ⌈1/rate⌉-th, not the first: a benchmark's first prompts (warm-up, a single timed prefill)
// run as they would without telemetry.
#pragma once

#include <cmath>
#include <cstdint>

namespace indexcache {

class StepSampler {
 public:
  explicit StepSampler(double rate = 0.0) : rate_(rate) {}

  bool Next() {
    const double i = static_cast<double>(offered_++);
    return std::floor((i + 1) * rate_) > std::floor(i * rate_);
  }

 private:
  double rate_;
  uint64_t offered_ = 0;
};

}  // namespace indexcache
