#include "services/router/stall_monitor.h"

#include <algorithm>
#include <utility>

namespace indexcache {

StallMonitor::StallMonitor(absl::Duration timeout, Clock clock) : timeout_(timeout), clock_(std::move(clock)) {
  thread_ = std::thread([this] { Run(); });
}

StallMonitor::~StallMonitor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void StallMonitor::Run() {
  const absl::Duration period = std::max(timeout_ / 8, absl::Milliseconds(10));
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, absl::ToChronoNanoseconds(period), [this] { return stopping_; })) {
    lock.unlock();
    Check();
    lock.lock();
  }
}

void StallMonitor::Check() {
  const int64_t now = NowNanos();
  const int64_t timeout = absl::ToInt64Nanoseconds(timeout_);
  std::lock_guard<std::mutex> lock(mu_);
  for (Watch* watch : watches_) {
    if (watch->stalled() || now - watch->last_progress_ns_.load(std::memory_order_acquire) < timeout) continue;
    watch->stalled_.store(true, std::memory_order_release);
    watch->on_stall_();
  }
}

StallMonitor::Watch::Watch(StallMonitor& monitor, std::function<void()> on_stall)
    : monitor_(monitor), on_stall_(std::move(on_stall)), last_progress_ns_(monitor.NowNanos()) {
  std::lock_guard<std::mutex> lock(monitor_.mu_);
  monitor_.watches_.push_back(this);
}

StallMonitor::Watch::~Watch() {
  std::lock_guard<std::mutex> lock(monitor_.mu_);
  std::erase(monitor_.watches_, this);
}

void StallMonitor::Watch::Progress() { last_progress_ns_.store(monitor_.NowNanos(), std::memory_order_release); }

}  // namespace indexcache
