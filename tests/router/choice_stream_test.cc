// A request's n choices on their own (choice_stream.h): each choice's sampling, the merged stream's
// `index` stamps under concurrent writers, and a failed choice aborting its siblings.
#include "services/router/choice_stream.h"

#include <atomic>
#include <condition_variable>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

// The client's side of the stream: records what reaches it, one write at a time (as gRPC requires:
// overlapping writes fail the test).
class RecordingWriter : public grpc::ServerWriterInterface<v1::GenerateResponse> {
 public:
  void SendInitialMetadata() override {}
  bool Write(const v1::GenerateResponse& message, grpc::WriteOptions) override {
    EXPECT_FALSE(writing_.exchange(true)) << "two writes at once";
    messages_.push_back(message);
    std::this_thread::yield();
    writing_ = false;
    return true;
  }
  const std::vector<v1::GenerateResponse>& messages() const { return messages_; }

 private:
  std::atomic<bool> writing_{false};
  std::vector<v1::GenerateResponse> messages_;
};

TEST(ChoiceStreamTest, SeededChoicesTakeSeedPlusIndexAndLoseN) {
  v1::GenerateRequest request;
  request.mutable_token_ids()->add_ids(3);
  request.mutable_sampling()->set_n(3);
  request.mutable_sampling()->set_seed(10);
  request.mutable_sampling()->set_temperature(0.7f);
  for (int choice = 0; choice < 3; ++choice) {
    const v1::GenerateRequest one = ChoiceRequest(request, choice);
    EXPECT_FALSE(one.sampling().has_n());
    EXPECT_EQ(one.sampling().seed(), 10u + choice);
    EXPECT_EQ(one.sampling().temperature(), 0.7f);
    EXPECT_EQ(one.token_ids().ids(0), 3);
  }
  request.mutable_sampling()->set_seed(std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(ChoiceRequest(request, 1).sampling().seed(), 0u);  // wraps, never overflows
  request.mutable_sampling()->clear_seed();
  EXPECT_FALSE(ChoiceRequest(request, 2).sampling().has_seed());  // the workers draw a fresh seed each
}

TEST(ChoiceStreamTest, EveryChoicesMessagesArriveStampedAndWhole) {
  RecordingWriter client;
  constexpr int kChoices = 4, kMessages = 200;
  ChoiceStreams streams(&client, kChoices);
  const grpc::Status status = RunChoices(
      kChoices,
      [&](int choice) {
        for (int i = 0; i < kMessages; ++i) {
          v1::GenerateResponse message;
          message.add_token_ids(choice * 1000 + i);
          EXPECT_TRUE(streams.choice(choice)->Write(message));
        }
        return grpc::Status::OK;
      },
      [] { ADD_FAILURE() << "nothing failed, nothing is aborted"; });
  EXPECT_TRUE(status.ok());
  ASSERT_EQ(client.messages().size(), static_cast<size_t>(kChoices * kMessages));
  std::map<int, std::vector<int>> by_choice;
  for (const v1::GenerateResponse& m : client.messages()) by_choice[m.index()].push_back(m.token_ids(0));
  for (int choice = 0; choice < kChoices; ++choice) {
    ASSERT_EQ(by_choice[choice].size(), static_cast<size_t>(kMessages));
    for (int i = 0; i < kMessages; ++i) EXPECT_EQ(by_choice[choice][i], choice * 1000 + i);  // in order
  }
}

TEST(ChoiceStreamTest, AFailedChoiceAbortsTheOthersAndIsTheRequestsStatus) {
  std::mutex mu;
  std::condition_variable changed;
  bool aborted = false;
  std::atomic<int> aborts{0};
  const grpc::Status status = RunChoices(
      3,
      [&](int choice) {
        if (choice == 1) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no decode worker");
        // The others run until the abort reaches them, as a GenerateCall does.
        std::unique_lock<std::mutex> lock(mu);
        changed.wait(lock, [&] { return aborted; });
        return grpc::Status::OK;
      },
      [&] {
        ++aborts;
        std::lock_guard<std::mutex> lock(mu);
        aborted = true;
        changed.notify_all();
      });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "no decode worker");
  EXPECT_EQ(aborts, 1);
}

}  // namespace
}  // namespace indexcache
