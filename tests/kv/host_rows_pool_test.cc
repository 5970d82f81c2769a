// HostRowsPool on the CPU backend: ranges come from one area and never overlap while taken; a
// range goes back when its last keep is dropped (from any thread), and freed neighbours coalesce so
// the whole area can be taken again; a Take that does not fit waits for a return, fails with
// DEADLINE_EXCEEDED when none comes in time and with RESOURCE_EXHAUSTED when it could never fit; a
// range outlives the pool's other owners.
#include "common/kv/host_rows_pool.h"

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr size_t kKiB = 1024;

class HostRowsPoolTest : public testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto pool = HostRowsPool::Create(*backend_, 64 * kKiB);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
  }

  absl::Time Soon() const { return absl::Now() + absl::Seconds(5); }

  std::unique_ptr<Backend> backend_;
  std::shared_ptr<HostRowsPool> pool_;
};

TEST_F(HostRowsPoolTest, RangesDoNotOverlapAndComeBackWhenTheirKeepIsDropped) {
  std::vector<HostRows> taken;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<HostRows> rows = pool_->Take(16 * kKiB, Soon());
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->size, 16 * kKiB);
    std::memset(rows->data, 'a' + i, rows->size);
    taken.push_back(*std::move(rows));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(taken[i].data[0], 'a' + i);
    EXPECT_EQ(taken[i].data[16 * kKiB - 1], 'a' + i);
  }
  EXPECT_EQ(pool_->in_use(), 64 * kKiB);
  // Return them out of order: the free ranges must coalesce back into the whole area.
  for (int i : {2, 0, 3, 1}) taken[i] = HostRows{};
  EXPECT_EQ(pool_->in_use(), 0u);
  absl::StatusOr<HostRows> whole = pool_->Take(64 * kKiB, Soon());
  ASSERT_TRUE(whole.ok()) << whole.status();
}

TEST_F(HostRowsPoolTest, ATakeThatDoesNotFitWaitsForAReturn) {
  absl::StatusOr<HostRows> first = pool_->Take(40 * kKiB, Soon());
  ASSERT_TRUE(first.ok());
  std::thread returner([held = std::move(first->keep)]() mutable {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    held.reset();
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<HostRows> second = pool_->Take(40 * kKiB, Soon());
  returner.join();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
}

TEST_F(HostRowsPoolTest, AFullPoolFailsPastTheDeadlineAndAnOversizedTakeAtOnce) {
  absl::StatusOr<HostRows> held = pool_->Take(60 * kKiB, Soon());
  ASSERT_TRUE(held.ok());
  absl::StatusOr<HostRows> late = pool_->Take(8 * kKiB, absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(late.status().message(), testing::HasSubstr("receive area"));
  absl::StatusOr<HostRows> huge = pool_->Take(65 * kKiB, Soon());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(HostRowsPoolTest, ARangeOutlivesThePoolsOtherOwners) {
  absl::StatusOr<HostRows> rows = pool_->Take(4 * kKiB, Soon());
  ASSERT_TRUE(rows.ok());
  std::weak_ptr<HostRowsPool> watch = pool_;
  pool_.reset();
  EXPECT_FALSE(watch.expired());
  std::memset(rows->data, 1, rows->size);  // still valid memory
  *rows = HostRows{};
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace indexcache
