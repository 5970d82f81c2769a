#include "common/model/reuse_overlap.h"

namespace indexcache {

double RowOverlap(absl::Span<const int32_t> reused, absl::Span<const int32_t> fresh, int64_t row_id,
                  std::vector<int64_t>& mark) {
  for (int32_t p : reused) {
    if (p >= 0) mark[p] = row_id;
  }
  int64_t selected = 0, shared = 0;
  for (int32_t p : fresh) {
    if (p < 0) continue;
    ++selected;
    if (mark[p] == row_id) ++shared;
  }
  return selected == 0 ? 1.0 : static_cast<double>(shared) / static_cast<double>(selected);
}

}  // namespace indexcache
