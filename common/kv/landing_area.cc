#include "common/kv/landing_area.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// Ranges start at this alignment (a device copy from an aligned source runs at full speed).
constexpr size_t kAlignment = 4096;

size_t AlignUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

absl::StatusOr<std::shared_ptr<LandingArea>> LandingArea::Create(Backend& backend, size_t capacity_bytes,
                                                                 RowsMemory memory) {
  const size_t bytes = AlignUp(std::max<size_t>(capacity_bytes, 1));
  if (memory == RowsMemory::kDevice) {
    ASSIGN_OR_RETURN(Buffer area, backend.Allocate(bytes));
    return std::shared_ptr<LandingArea>(new LandingArea(HostBuffer(), std::move(area)));
  }
  ASSIGN_OR_RETURN(HostBuffer area, backend.AllocateHost(bytes));
  return std::shared_ptr<LandingArea>(new LandingArea(std::move(area), Buffer()));
}

LandingArea::LandingArea(HostBuffer host, Buffer device)
    : host_(std::move(host)),
      device_(std::move(device)),
      base_(static_cast<char*>(host_.data() != nullptr ? host_.data() : device_.data())),
      capacity_(host_.data() != nullptr ? host_.bytes() : device_.bytes()),
      memory_(host_.data() != nullptr ? RowsMemory::kHost : RowsMemory::kDevice) {
  free_.emplace(0, capacity_);
}

size_t LandingArea::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

absl::StatusOr<LandedRows> LandingArea::Take(size_t bytes, absl::Time deadline) {
  const size_t length = AlignUp(std::max<size_t>(bytes, 1));
  if (length > capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("%d bytes of rows do not fit the %d-byte receive area at all", bytes, capacity_));
  }
  std::unique_lock<std::mutex> lock(mu_);
  size_t offset = 0;
  for (;;) {
    // First fit: ranges tend to one size (a prefill worker's rows chunks), so this rarely fragments.
    auto fit = std::find_if(free_.begin(), free_.end(), [&](const auto& range) { return range.second >= length; });
    if (fit != free_.end()) {
      offset = fit->first;
      const size_t rest = fit->second - length;
      free_.erase(fit);
      if (rest > 0) free_.emplace(offset + length, rest);
      break;
    }
    if (returned_.wait_until(lock, absl::ToChronoTime(deadline)) == std::cv_status::timeout) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "no room for %d bytes of rows: %d of the %d-byte receive area still wait for their import", bytes,
          in_use_, capacity_));
    }
  }
  in_use_ += length;
  char* data = base_ + offset;
  // The keep holds the pool too, so a range outliving every other owner still has somewhere to go back.
  std::shared_ptr<const void> keep(data, [pool = shared_from_this(), offset, length](const void*) {
    pool->Return(offset, length);
  });
  return LandedRows{.data = data, .size = bytes, .keep = std::move(keep), .memory = memory_};
}

void LandingArea::Return(size_t offset, size_t length) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= length;
    auto next = free_.lower_bound(offset);
    if (next != free_.end() && offset + length == next->first) {
      length += next->second;
      next = free_.erase(next);
    }
    auto before = next == free_.begin() ? free_.end() : std::prev(next);
    if (before != free_.end() && before->first + before->second == offset) {
      before->second += length;
    } else {
      free_.emplace(offset, length);
    }
  }
  returned_.notify_all();
}

}  // namespace indexcache
