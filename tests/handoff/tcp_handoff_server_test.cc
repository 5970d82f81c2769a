// The TCP handoff server reads asynchronously (issue 13): connections waiting for their peer hold no
// thread, a peer silent for the I/O timeout is closed, and a sink call that blocks on one connection
// does not hold up another connection's handoff.
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/handoff/tcp/handshake.h"
#include "common/handoff/tcp/tcp_frame.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "common/util/host_port.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cluster_token_for_tests.h"
#include "tests/handoff/fake_sink.h"

namespace indexcache {
namespace {

using ::indexcache::testing::TestClusterToken;
using testing::FakeSink;
using testing::MakeHandoff;

// Threads of this process, from /proc.
int ThreadCount() {
  int threads = 0;
  for ([[maybe_unused]] const auto& task : std::filesystem::directory_iterator("/proc/self/task")) ++threads;
  return threads;
}

absl::Status HandOff(const std::string& address, const std::vector<v1::HandoffChunk>& chunks) {
  absl::StatusOr<std::unique_ptr<TcpHandoffSender>> sender =
      TcpHandoffSender::Connect(address, absl::Seconds(5), {.io_timeout = absl::Seconds(10), .token = TestClusterToken()});
  if (!sender.ok()) return sender.status();
  for (const v1::HandoffChunk& chunk : chunks) {
    if (absl::Status sent = (*sender)->Send(chunk); !sent.ok()) return sent;
  }
  absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
  if (!ack.ok()) return ack.status();
  return AckStatus(*ack);
}

// A raw connection that has answered the server's challenge, as a sender's does before its first frame.
std::unique_ptr<FramedConnection> OpenAuthenticated(const std::string& address) {
  auto connection = std::make_unique<FramedConnection>(absl::Seconds(10));
  absl::StatusOr<HostPort> target = SplitHostPort(address);
  EXPECT_TRUE(target.ok()) << target.status();
  EXPECT_TRUE(connection->Connect(target->host, target->port, absl::Seconds(5)).ok());
  EXPECT_TRUE(AnswerChallenge(*connection, TestClusterToken()).ok());
  return connection;
}

TEST(TcpHandoffServerTest, IdleAuthenticatedConnectionsHoldNoThreads) {
  FakeSink sink;
  sink.land_rows = true;
  auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink,
                                        {.io_timeout = absl::Seconds(30), .token = TestClusterToken()});
  ASSERT_TRUE(server.ok()) << server.status();
  const int before = ThreadCount();
  constexpr int kIdle = 60;  // below the default cap of 64, which leaves room for the real handoff
  std::vector<std::unique_ptr<FramedConnection>> idle;
  for (int i = 0; i < kIdle; ++i) idle.push_back(OpenAuthenticated((*server)->address()));
  // The server has taken every answer once the real handoff below, accepted after them, is served;
  // a server with a thread per connection has started one for each by then.
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("served", {4096, 8192});
  ASSERT_TRUE(HandOff((*server)->address(), chunks).ok());
  EXPECT_EQ(sink.completed(), std::vector<std::string>{"served"});
  EXPECT_EQ(sink.landed(), 2);  // the rows went straight into the sink's memory
  const int grown = ThreadCount() - before;
  EXPECT_EQ(grown, 0) << kIdle << " idle connections took " << grown << " threads";
  EXPECT_EQ((*server)->authentication_failures(), 0u);
  // Shutdown breaks them all at once, without waiting for their I/O timeout.
  const absl::Time start = absl::Now();
  (*server)->Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(sink.broken().size(), static_cast<size_t>(kIdle));
}

TEST(TcpHandoffServerTest, AnIdleConnectionIsClosedAfterTheIoTimeout) {
  constexpr absl::Duration kIoTimeout = absl::Milliseconds(300);
  FakeSink sink;
  auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink, {.io_timeout = kIoTimeout, .token = TestClusterToken()});
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<FramedConnection> connection = OpenAuthenticated((*server)->address());
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::HandoffAck> ack = ReadAckFrame(*connection);  // sending nothing
  const absl::Duration waited = absl::Now() - start;
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kDeadlineExceeded) << ack->error();
  EXPECT_THAT(ack->error(), ::testing::HasSubstr("no progress within 300ms"));
  EXPECT_GE(waited, kIoTimeout - absl::Milliseconds(50));
  EXPECT_LT(waited, absl::Seconds(5));
  char more;
  EXPECT_EQ(connection->ReadExactly(&more, 1).code(), absl::StatusCode::kUnavailable);  // then closed
  ASSERT_TRUE(sink.WaitForEnd());
  ASSERT_EQ(sink.broken().size(), 1u);
  EXPECT_EQ(sink.broken()[0].second.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(TcpHandoffServerTest, APeerThatNeverAnswersTheChallengeIsClosedAfterTheIoTimeout) {
  FakeSink sink;
  auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink,
                                        {.io_timeout = absl::Milliseconds(300), .token = TestClusterToken()});
  ASSERT_TRUE(server.ok()) << server.status();
  FramedConnection silent(absl::Seconds(10));
  absl::StatusOr<HostPort> target = SplitHostPort((*server)->address());
  ASSERT_TRUE(target.ok());
  ASSERT_TRUE(silent.Connect(target->host, target->port, absl::Seconds(5)).ok());
  const absl::Time start = absl::Now();
  std::string nonce(ClusterToken::kNonceBytes, '\0');
  ASSERT_TRUE(silent.ReadExactly(nonce.data(), nonce.size()).ok());
  char more;
  EXPECT_EQ(silent.ReadExactly(&more, 1).code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ((*server)->authentication_failures(), 1u);
  EXPECT_TRUE(sink.broken().empty());  // no stream was ever opened
}

// Lands rows in memory of its own, but holds the LandRows of one request until released: a decode
// worker whose receive area is full makes LandRows wait like this.
class GatedLandingSink : public HandoffSink {
 public:
  explicit GatedLandingSink(std::string gated) : gated_(std::move(gated)) {}

  absl::StatusOr<LandedRows> LandRows(const v1::HandoffChunk& chunk, size_t bytes, RowsMemory /*memory*/) override {
    if (chunk.request_id() == gated_) {
      std::unique_lock<std::mutex> lock(mu_);
      ++gated_waiting_;
      changed_.notify_all();
      changed_.wait_for(lock, std::chrono::seconds(20), [&] { return released_; });
    }
    auto area = std::make_shared<std::string>(bytes, '\0');
    return LandedRows{area->data(), bytes, area};
  }
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows rows) override {
    return VerifyChunkChecksum(chunk, rows.view());
  }
  v1::HandoffAck OnComplete(const std::string& request_id) override { return MakeAck(absl::OkStatus()); }
  void OnBroken(const std::string& request_id, const absl::Status& why) override {}

  // Waits (up to 10 s) until the gated request's LandRows is waiting.
  bool WaitForGated() {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(10), [&] { return gated_waiting_ > 0; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    changed_.notify_all();
  }

 private:
  const std::string gated_;
  std::mutex mu_;
  std::condition_variable changed_;
  int gated_waiting_ = 0;  // guarded by mu_
  bool released_ = false;  // guarded by mu_
};

TEST(TcpHandoffServerTest, ASinkHoldingOneConnectionDoesNotStallAnother) {
  GatedLandingSink sink("slow");
  auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink,
                                        {.io_timeout = absl::Seconds(30), .token = TestClusterToken()});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  std::future<absl::Status> slow =
      std::async(std::launch::async, [&] { return HandOff(address, MakeHandoff("slow", {4096})); });
  ASSERT_TRUE(sink.WaitForGated());
  const absl::Time start = absl::Now();
  for (int i = 0; i < 3; ++i) {
    absl::Status fast = HandOff(address, MakeHandoff("fast-" + std::to_string(i), {4096, 4096}));
    EXPECT_TRUE(fast.ok()) << fast;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(slow.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);  // still held
  sink.Release();
  absl::Status held = slow.get();
  EXPECT_TRUE(held.ok()) << held;
}

}  // namespace
}  // namespace indexcache
