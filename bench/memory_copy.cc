#include "bench/memory_copy.h"

#include <omp.h>

#include <cstring>
#include <vector>

namespace indexcache::bench {

Sample TimeCopy(size_t bytes, int threads, double min_seconds) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  auto copy = [&] {
#pragma omp parallel num_threads(threads)
    {
      const size_t part = bytes / omp_get_num_threads();
      const size_t begin = part * omp_get_thread_num();
      std::memcpy(dst.data() + begin, src.data() + begin, part);
    }
  };
  return min_seconds > 0.0 ? TimeBatched(copy, /*warmup=*/2, /*reps=*/7, min_seconds)
                           : TimeRepeated(copy, /*warmup=*/2, /*reps=*/7);
}

}  // namespace indexcache::bench
