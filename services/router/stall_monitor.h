// Stage timeouts: an attempt whose workers show no progress for `timeout` — no `admitted` from the
// decode worker, no handoff rows arriving there, no token — is cancelled, so that the router fails it
// over (another pair when no token reached the client yet) instead of leaving it to hang until its
// deadline: a SIGSTOPped worker held its requests for the whole 600 s default deadline (issue 13).
// One thread checks every watched attempt; the attempt reports progress as it sees it.
//
//   StallMonitor monitor(absl::Seconds(60));
//   StallMonitor::Watch watch(monitor, [&] { decode_call->TryCancel(); prefill_call->TryCancel(); });
//   while (stream->Read(&message)) { if (/* it moved */) watch.Progress(); ... }
//   if (watch.stalled()) ...  // the calls were cancelled because nothing moved for `timeout`
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace indexcache {

class StallMonitor {
 public:
  using Clock = std::function<absl::Time()>;

  // Checks every watch each `timeout / 8` (at least every 10 ms) on a thread of its own; `clock`
  // tells the time (tests pass a manual one and call Check).
  explicit StallMonitor(absl::Duration timeout, Clock clock = [] { return absl::Now(); });
  ~StallMonitor();  // every Watch must be gone
  StallMonitor(const StallMonitor&) = delete;
  StallMonitor& operator=(const StallMonitor&) = delete;

  absl::Duration timeout() const { return timeout_; }

  // One attempt, watched from construction (which counts as progress) to destruction.
  class Watch {
   public:
    // `on_stall` runs once, on the monitor's thread, when `timeout` passes without Progress; it must
    // not block (cancel calls, set flags). It never runs once the destructor returned.
    Watch(StallMonitor& monitor, std::function<void()> on_stall);
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    // Any thread: the attempt moved; the timeout starts again.
    void Progress();
    // Whether on_stall ran.
    bool stalled() const { return stalled_.load(std::memory_order_acquire); }

   private:
    friend class StallMonitor;
    StallMonitor& monitor_;
    const std::function<void()> on_stall_;
    std::atomic<int64_t> last_progress_ns_;  // absl::ToUnixNanos of the monitor's clock
    std::atomic<bool> stalled_{false};
  };

  // Stalls every watch whose last progress is `timeout` old or more; the thread calls it, tests too.
  void Check();

 private:
  int64_t NowNanos() const { return absl::ToUnixNanos(clock_()); }
  void Run();

  const absl::Duration timeout_;
  const Clock clock_;
  std::mutex mu_;  // held while on_stall runs, so a Watch's destructor waits for it
  std::condition_variable wake_;
  std::vector<Watch*> watches_;  // guarded by mu_
  bool stopping_ = false;        // guarded by mu_
  std::thread thread_;
};

}  // namespace indexcache
