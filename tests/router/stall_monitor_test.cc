// StallMonitor on a manual clock: which watches stall, when, and that on_stall runs once and never
// after a watch is gone. The truth is the clock the test sets; Check is called by hand (the monitor's
// own thread calls it too, which changes nothing: the outcome depends only on the manual clock).
#include "services/router/stall_monitor.h"

#include <atomic>
#include <memory>

#include "gtest/gtest.h"

namespace indexcache {
namespace {

class ManualClock {
 public:
  absl::Time Now() const { return absl::FromUnixNanos(nanos_.load()); }
  void Advance(absl::Duration d) { nanos_ += absl::ToInt64Nanoseconds(d); }
  StallMonitor::Clock AsClock() {
    return [this] { return Now(); };
  }

 private:
  std::atomic<int64_t> nanos_{absl::ToUnixNanos(absl::FromUnixSeconds(1'000'000))};
};

TEST(StallMonitorTest, AWatchWithoutProgressStallsOnceAtTheTimeout) {
  ManualClock clock;
  StallMonitor monitor(absl::Seconds(10), clock.AsClock());
  std::atomic<int> stalls{0};
  StallMonitor::Watch watch(monitor, [&] { ++stalls; });
  clock.Advance(absl::Seconds(9));
  monitor.Check();
  EXPECT_FALSE(watch.stalled());
  EXPECT_EQ(stalls, 0);
  clock.Advance(absl::Seconds(1));
  monitor.Check();
  EXPECT_TRUE(watch.stalled());
  EXPECT_EQ(stalls, 1);
  clock.Advance(absl::Seconds(30));
  monitor.Check();
  EXPECT_EQ(stalls, 1) << "on_stall runs once";
}

TEST(StallMonitorTest, ProgressRestartsTheTimeoutOfItsWatchOnly) {
  ManualClock clock;
  StallMonitor monitor(absl::Seconds(10), clock.AsClock());
  std::atomic<int> busy_stalls{0}, idle_stalls{0};
  StallMonitor::Watch busy(monitor, [&] { ++busy_stalls; });
  StallMonitor::Watch idle(monitor, [&] { ++idle_stalls; });
  for (int i = 0; i < 5; ++i) {
    clock.Advance(absl::Seconds(6));
    busy.Progress();
    monitor.Check();
  }
  EXPECT_FALSE(busy.stalled());
  EXPECT_TRUE(idle.stalled());
  EXPECT_EQ(busy_stalls, 0);
  EXPECT_EQ(idle_stalls, 1);
}

TEST(StallMonitorTest, AWatchGoneBeforeItsTimeoutNeverStalls) {
  ManualClock clock;
  StallMonitor monitor(absl::Seconds(10), clock.AsClock());
  std::atomic<int> stalls{0};
  auto watch = std::make_unique<StallMonitor::Watch>(monitor, [&] { ++stalls; });
  watch.reset();
  clock.Advance(absl::Seconds(60));
  monitor.Check();
  EXPECT_EQ(stalls, 0);
}

TEST(StallMonitorTest, ItsOwnThreadStallsAWatchWithoutHelp) {
  // The real clock and a short timeout: the only wait is for something that must happen (no bound
  // on how late is checked but the test's own timeout), so a slow machine cannot fail it.
  StallMonitor monitor(absl::Milliseconds(100));
  std::atomic<bool> stalled{false};
  StallMonitor::Watch watch(monitor, [&] { stalled = true; });
  while (!stalled) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(watch.stalled());
}

}  // namespace
}  // namespace indexcache
