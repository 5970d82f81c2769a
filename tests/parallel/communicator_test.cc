// The in-process group (common/parallel/communicator.h): ranks as threads all-reduce to the same sum,
// added in rank order (checked against a sum computed here in that order: the same bits), over many
// calls in a row; a rank whose tensor's shape differs fails every rank alike, and none is left waiting.
#include "common/parallel/communicator.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

TEST(InProcessGroupTest, EveryRankGetsTheSumInRankOrderCallAfterCall) {
  constexpr int32_t kRanks = 3, kRows = 4, kCols = 5, kCalls = 20;
  auto backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<std::unique_ptr<Communicator>> group = MakeInProcessGroup(kRanks);
  ASSERT_EQ(group.size(), static_cast<size_t>(kRanks));
  auto value = [](int32_t call, int32_t rank, int32_t i) { return 0.1f * static_cast<float>((call * 7 + rank * 13 + i * 3) % 17) - 0.8f; };
  std::vector<std::vector<std::vector<float>>> results(kRanks, std::vector<std::vector<float>>(kCalls));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      EXPECT_EQ(group[r]->rank(), r);
      EXPECT_EQ(group[r]->size(), kRanks);
      for (int32_t call = 0; call < kCalls; ++call) {
        std::vector<float> data(kRows * kCols);
        for (int32_t i = 0; i < kRows * kCols; ++i) data[i] = value(call, r, i);
        EXPECT_TRUE(group[r]->AllReduceSum(**backend, Tensor::Matrix(data.data(), DType::kF32, kRows, kCols)).ok());
        results[r][call] = data;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int32_t call = 0; call < kCalls; ++call) {
    std::vector<float> want(kRows * kCols, 0.0f);
    for (int32_t r = 0; r < kRanks; ++r) {
      for (int32_t i = 0; i < kRows * kCols; ++i) want[i] += value(call, r, i);
    }
    for (int32_t r = 0; r < kRanks; ++r) EXPECT_EQ(results[r][call], want) << "rank " << r << " call " << call;
  }
}

TEST(InProcessGroupTest, AShapeMismatchFailsEveryRankWithoutAHang) {
  auto backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  std::vector<std::unique_ptr<Communicator>> group = MakeInProcessGroup(2);
  std::vector<absl::Status> statuses(2);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::vector<float> data(r == 0 ? 6 : 8, 1.0f);
      statuses[r] = group[r]->AllReduceSum(**backend, Tensor::Matrix(data.data(), DType::kF32, 2, r == 0 ? 3 : 4));
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("met [2,"));
  }
}

}  // namespace
}  // namespace indexcache
