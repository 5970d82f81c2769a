// The handoff transports' authentication (issue 13): with a cluster token, a TCP handoff connection
// that fails the HMAC challenge is closed before the receiver reads a frame — the sink sees nothing,
// nothing a frame announces is allocated — and a KvHandoff.Push without the token is
// UNAUTHENTICATED; with the token, handoffs go through as before. Plus the token's own primitives.
#include <memory>
#include <string>

#include "common/auth/cluster_token.h"
#include "common/handoff/grpc/grpc_handoff.h"
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
using ::testing::HasSubstr;
using testing::FakeSink;
using testing::MakeHandoff;

const ClusterToken& WrongToken() {
  static const ClusterToken token = *ClusterToken::FromSecret(std::string(64, 'e'));
  return token;
}

TEST(ClusterTokenTest, SecretsAreLongEnoughAndComparedExactly) {
  EXPECT_EQ(ClusterToken::FromSecret("short").status().code(), absl::StatusCode::kInvalidArgument);
  const ClusterToken& token = TestClusterToken();
  EXPECT_TRUE(token.Matches(::indexcache::testing::kTestClusterSecret));
  EXPECT_FALSE(token.Matches(std::string(::indexcache::testing::kTestClusterSecret) + "0"));
  EXPECT_FALSE(token.Matches(""));
  EXPECT_FALSE(ClusterToken().Matches(""));  // none matches nothing
  absl::StatusOr<std::string> a = ClusterToken::GenerateSecret();
  absl::StatusOr<std::string> b = ClusterToken::GenerateSecret();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 2 * ClusterToken::kSecretBytes);
  EXPECT_NE(*a, *b);
  EXPECT_TRUE(ClusterToken::FromSecret(*a).ok());
}

TEST(ClusterTokenTest, ResponsesBindTheTokenTheNonceAndTheContext) {
  const std::string nonce = *ClusterToken::NewNonce();
  const std::string response = TestClusterToken().Respond(nonce, kHandoffAuthContext);
  EXPECT_EQ(response.size(), ClusterToken::kResponseBytes);
  EXPECT_TRUE(TestClusterToken().CheckResponse(nonce, kHandoffAuthContext, response));
  EXPECT_FALSE(TestClusterToken().CheckResponse(*ClusterToken::NewNonce(), kHandoffAuthContext, response));
  EXPECT_FALSE(TestClusterToken().CheckResponse(nonce, "another channel", response));
  EXPECT_FALSE(TestClusterToken().CheckResponse(nonce, kHandoffAuthContext,
                                                WrongToken().Respond(nonce, kHandoffAuthContext)));
}

class TcpHandoffAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink_,
                                          {.io_timeout = absl::Seconds(5), .token = TestClusterToken()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  FakeSink sink_;
  std::unique_ptr<TcpHandoffServer> server_;
};

TEST_F(TcpHandoffAuthTest, ASenderWithTheTokenHandsOff) {
  auto sender = TcpHandoffSender::Connect(server_->address(), absl::Seconds(5), {.token = TestClusterToken()});
  ASSERT_TRUE(sender.ok()) << sender.status();
  for (const v1::HandoffChunk& chunk : MakeHandoff("req-auth", {1000, 2000})) ASSERT_TRUE((*sender)->Send(chunk).ok());
  absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->accepted()) << ack->error();
  EXPECT_EQ(sink_.completed(), std::vector<std::string>{"req-auth"});
  EXPECT_EQ(server_->authentication_failures(), 0u);
}

// The attack of issue 13: a 25-byte frame announcing 64 MB. Without the token the server never reads
// it as a frame: the connection is closed after the challenge, the sink sees nothing.
TEST_F(TcpHandoffAuthTest, AConnectionWithoutTheTokenIsClosedBeforeAnyFrameIsRead) {
  absl::StatusOr<HostPort> target = SplitHostPort(server_->address());
  ASSERT_TRUE(target.ok());
  FramedConnection stranger(absl::Seconds(5));
  ASSERT_TRUE(stranger.Connect(target->host, target->port, absl::Seconds(5)).ok());
  const absl::Time start = absl::Now();
  // Its frame's prefix (16 bytes) and more are taken as the 32-byte answer to the challenge.
  ASSERT_TRUE(stranger.WriteFrame(FrameKind::kChunk, std::string(9, 'x'), {}).ok());
  ASSERT_TRUE(stranger.WriteExactly(std::string(7, 'y')).ok());
  std::string nonce(ClusterToken::kNonceBytes, '\0');
  ASSERT_TRUE(stranger.ReadExactly(nonce.data(), nonce.size()).ok());  // the challenge came first
  char more;
  EXPECT_FALSE(stranger.ReadExactly(&more, 1).ok());  // then the server closed
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));    // at once, not at its I/O timeout
  EXPECT_TRUE(sink_.chunks().empty());
  EXPECT_TRUE(sink_.broken().empty());  // no stream was ever opened
  EXPECT_EQ(server_->authentication_failures(), 1u);
}

TEST_F(TcpHandoffAuthTest, ASenderWithAnotherTokenOrNoneGetsNoChunkThrough) {
  {
    auto sender = TcpHandoffSender::Connect(server_->address(), absl::Seconds(5), {.token = WrongToken()});
    ASSERT_TRUE(sender.ok()) << sender.status();  // it answered; the server judges
    absl::Status sent = absl::OkStatus();
    for (const v1::HandoffChunk& chunk : MakeHandoff("req-wrong", {1000})) {
      if (sent.ok()) sent = (*sender)->Send(chunk);
    }
    EXPECT_FALSE(sent.ok() && (*sender)->Finish().ok());
  }
  {
    // No token at all: its first frame is taken for an answer and fails.
    auto sender = TcpHandoffSender::Connect(server_->address(), absl::Seconds(5), {.io_timeout = absl::Seconds(5)});
    ASSERT_TRUE(sender.ok()) << sender.status();
    absl::Status sent = absl::OkStatus();
    for (const v1::HandoffChunk& chunk : MakeHandoff("req-none", {1000})) {
      if (sent.ok()) sent = (*sender)->Send(chunk);
    }
    EXPECT_FALSE(sent.ok() && (*sender)->Finish().ok());
  }
  // The tokenless sender may fail first (it reads the server's challenge as a garbled ack) while the
  // server is still judging its answer: wait for the server's count rather than racing it.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (server_->authentication_failures() < 2 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(server_->authentication_failures(), 2u);
  EXPECT_TRUE(sink_.chunks().empty());
}

TEST(GrpcHandoffAuthTest, APushWithoutTheTokenIsUnauthenticatedAndReachesNoSink) {
  FakeSink sink;
  KvHandoffService service(&sink, TestClusterToken());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  for (const ClusterToken& token : {ClusterToken(), WrongToken()}) {
    auto sender = GrpcHandoffSender::Connect(address, absl::Seconds(5), token);
    ASSERT_TRUE(sender.ok()) << sender.status();
    for (const v1::HandoffChunk& chunk : MakeHandoff("victim-request", {1000})) (void)(*sender)->Send(chunk);
    absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
    EXPECT_EQ(ack.status().code(), absl::StatusCode::kUnauthenticated) << ack.status();
  }
  EXPECT_TRUE(sink.chunks().empty());
  EXPECT_TRUE(sink.broken().empty());
  auto sender = GrpcHandoffSender::Connect(address, absl::Seconds(5), TestClusterToken());
  ASSERT_TRUE(sender.ok());
  for (const v1::HandoffChunk& chunk : MakeHandoff("own-request", {1000})) ASSERT_TRUE((*sender)->Send(chunk).ok());
  absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->accepted());
  server->Shutdown();
}

}  // namespace
}  // namespace indexcache
