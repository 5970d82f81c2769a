// LandingArea on the CPU backend: ranges come from one area and never overlap while taken; a
// range goes back when its last keep is dropped (from any thread), and freed neighbours coalesce so
// the whole area can be taken again; a Take that does not fit waits for a return, fails with
// DEADLINE_EXCEEDED when none comes in time and with RESOURCE_EXHAUSTED when it could never fit; a
// range outlives the pool's other owners. A device area's ranges are marked as device rows.
#include "common/kv/landing_area.h"

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr size_t kKiB = 1024;

class LandingAreaTest : public testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend("cpu", 1);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto pool = LandingArea::Create(*backend_, 64 * kKiB);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = std::move(*pool);
  }

  absl::Time Soon() const { return absl::Now() + absl::Seconds(5); }

  std::unique_ptr<Backend> backend_;
  std::shared_ptr<LandingArea> pool_;
};

TEST_F(LandingAreaTest, RangesDoNotOverlapAndComeBackWhenTheirKeepIsDropped) {
  std::vector<LandedRows> taken;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<LandedRows> rows = pool_->Take(16 * kKiB, Soon());
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
  for (int i : {2, 0, 3, 1}) taken[i] = LandedRows{};
  EXPECT_EQ(pool_->in_use(), 0u);
  absl::StatusOr<LandedRows> whole = pool_->Take(64 * kKiB, Soon());
  ASSERT_TRUE(whole.ok()) << whole.status();
}

TEST_F(LandingAreaTest, HostAndDeviceAreasMarkTheirRanges) {
  EXPECT_EQ(pool_->memory(), RowsMemory::kHost);
  absl::StatusOr<LandedRows> host = pool_->Take(kKiB, Soon());
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_FALSE(host->on_device());

  auto device = LandingArea::Create(*backend_, 8 * kKiB, RowsMemory::kDevice);
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ((*device)->memory(), RowsMemory::kDevice);
  EXPECT_EQ((*device)->capacity(), 8 * kKiB);
  absl::StatusOr<LandedRows> rows = (*device)->Take(3 * kKiB, Soon());
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_TRUE(rows->on_device());
  EXPECT_FALSE(rows->crc.has_value()) << "only the transport that receives them knows their CRC";
  EXPECT_EQ((*device)->in_use(), 4 * kKiB) << "ranges are 4 KiB aligned";
}

TEST_F(LandingAreaTest, ATakeThatDoesNotFitWaitsForAReturn) {
  absl::StatusOr<LandedRows> first = pool_->Take(40 * kKiB, Soon());
  ASSERT_TRUE(first.ok());
  std::thread returner([held = std::move(first->keep)]() mutable {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    held.reset();
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<LandedRows> second = pool_->Take(40 * kKiB, Soon());
  returner.join();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
}

TEST_F(LandingAreaTest, AFullPoolFailsPastTheDeadlineAndAnOversizedTakeAtOnce) {
  absl::StatusOr<LandedRows> held = pool_->Take(60 * kKiB, Soon());
  ASSERT_TRUE(held.ok());
  absl::StatusOr<LandedRows> late = pool_->Take(8 * kKiB, absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(late.status().message(), testing::HasSubstr("receive area"));
  absl::StatusOr<LandedRows> huge = pool_->Take(65 * kKiB, Soon());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(LandingAreaTest, ARangeOutlivesThePoolsOtherOwners) {
  absl::StatusOr<LandedRows> rows = pool_->Take(4 * kKiB, Soon());
  ASSERT_TRUE(rows.ok());
  std::weak_ptr<LandingArea> watch = pool_;
  pool_.reset();
  EXPECT_FALSE(watch.expired());
  std::memset(rows->data, 1, rows->size);  // still valid memory
  *rows = LandedRows{};
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace indexcache
