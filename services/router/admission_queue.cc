#include "services/router/admission_queue.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace indexcache {

AdmissionQueue::AdmissionQueue(WorkerRegistry& registry, absl::Duration poll_interval)
    : registry_(registry), poll_interval_(poll_interval) {}

AdmissionQueue::Ticket AdmissionQueue::NewTicket() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_ticket_++;
}

absl::StatusOr<Placement> AdmissionQueue::Wait(Ticket ticket, const Demand& demand,
                                               absl::Span<const std::string> exclude_decode,
                                               absl::Span<const std::string> exclude_prefill, absl::Time deadline,
                                               const std::function<absl::Status()>& interrupted) {
  const absl::Time entered = absl::Now();
  std::unique_lock<std::mutex> lock(mu_);
  line_.insert(ticket);
  // Leaving the line (placed or not) lets the next request be first.
  auto leave = [&](absl::StatusOr<Placement> result) {
    line_.erase(ticket);
    ++generation_;
    changed_.notify_all();
    return result;
  };
  std::string busy = "it is not yet first in line";
  for (;;) {
    if (absl::Status status = interrupted(); !status.ok()) return leave(status);
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return leave(absl::DeadlineExceededError(absl::StrFormat(
          "the deadline passed after %.3f s in the router's queue (%d requests waiting); %s",
          absl::ToDoubleSeconds(now - entered), line_.size(), busy)));
    }
    if (*line_.begin() == ticket) {
      const uint64_t before = generation_;
      // Placing takes the registry's lock, and leases it hands back call Notify: not under ours.
      lock.unlock();
      absl::StatusOr<Placement> placement = registry_.TryPlace(demand, exclude_decode, exclude_prefill);
      lock.lock();
      if (!placement.ok() || placement->placed()) return leave(std::move(placement));
      busy = std::move(placement->busy);
      if (generation_ != before) continue;  // room appeared while placing: try again at once
    }
    changed_.wait_until(lock, absl::ToChronoTime(std::min(deadline, now + poll_interval_)));
  }
}

void AdmissionQueue::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
  }
  changed_.notify_all();
}

int AdmissionQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(line_.size());
}

}  // namespace indexcache
