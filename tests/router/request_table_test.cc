// The request table's queue slots for requests with several choices (sampling.n): one slot per
// choice, each choice leaving and returning its own, the bound counting every choice.
#include "services/router/request_table.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

TEST(RequestTableTest, EveryChoiceHoldsItsOwnQueueSlot) {
  RequestTable table(/*max_queued=*/4);
  absl::StatusOr<std::shared_ptr<RequestHandle>> three = table.Admit("three", 3);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(table.queued(), 3);
  // Two more choices would take the queue past its bound; one fits.
  EXPECT_EQ(table.Admit("two", 2).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<std::shared_ptr<RequestHandle>> one = table.Admit("one");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(table.queued(), 4);

  (*three)->LeaveQueue(0);
  (*three)->LeaveQueue(0);  // a second leave of the same choice changes nothing
  EXPECT_EQ(table.queued(), 3);
  (*three)->LeaveQueue(2);
  EXPECT_EQ(table.queued(), 2);
  (*three)->ReturnToQueue(0);  // a retried choice waits again
  (*three)->ReturnToQueue(1);  // never left: changes nothing
  EXPECT_EQ(table.queued(), 3);
  EXPECT_EQ(table.in_flight(), 2);

  EXPECT_TRUE(table.Abort("three"));  // one id reaches every choice
  EXPECT_TRUE((*three)->aborted());
  table.Finish(*three);  // frees the slots its choices still held
  EXPECT_EQ(table.queued(), 1);
  table.Finish(*one);
  EXPECT_EQ(table.queued(), 0);
  EXPECT_EQ(table.in_flight(), 0);
}

}  // namespace
}  // namespace indexcache
