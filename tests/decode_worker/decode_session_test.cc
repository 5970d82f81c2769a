// DecodeSession's queue of received rows: when the transport thread must post an import to the engine
// loop (one queued at a time, once the rows waiting weigh a batch), and what the import takes.
#include "services/decode_worker/decode_session.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace indexcache {
namespace {

DecodeSession::PendingRows Rows(int32_t begin, size_t bytes) {
  auto data = std::make_shared<std::string>(bytes, 'r');
  return DecodeSession::PendingRows{0, KvRowKind::kLatent, begin, 1, LandedRows{data->data(), bytes, data}};
}

TEST(DecodeSessionTest, AnImportIsPostedOnceTheRowsWaitingWeighABatch) {
  DecodeSession session("r", 1, 8, /*cached_tokens=*/0, /*pattern=*/0, absl::Now());
  EXPECT_FALSE(session.QueueRows(Rows(0, 10), 25));
  EXPECT_FALSE(session.QueueRows(Rows(1, 10), 25));
  EXPECT_TRUE(session.QueueRows(Rows(2, 10), 25));  // 30 bytes wait
  // Posted and not run yet: the queued import will take these too.
  EXPECT_FALSE(session.QueueRows(Rows(3, 100), 25));
  std::vector<DecodeSession::PendingRows> taken = session.TakeRows();
  ASSERT_EQ(taken.size(), 4u);
  for (int32_t i = 0; i < 4; ++i) EXPECT_EQ(taken[i].begin, i);  // in the order received
  // The count starts over after the take.
  EXPECT_FALSE(session.QueueRows(Rows(4, 10), 25));
  EXPECT_EQ(session.TakeRows().size(), 1u);
}

TEST(DecodeSessionTest, AZeroBatchPostsForEveryRowsWhenNoImportIsQueued) {
  DecodeSession session("r", 1, 8, /*cached_tokens=*/0, /*pattern=*/0, absl::Now());
  EXPECT_TRUE(session.QueueRows(Rows(0, 1), 0));
  EXPECT_FALSE(session.QueueRows(Rows(1, 1), 0));  // one import at a time
  EXPECT_EQ(session.TakeRows().size(), 2u);
  EXPECT_TRUE(session.QueueRows(Rows(2, 1), 0));
  EXPECT_EQ(session.TakeRows().size(), 1u);
  EXPECT_TRUE(session.TakeRows().empty());  // the trailer's take after an import that took all
}

}  // namespace
}  // namespace indexcache
