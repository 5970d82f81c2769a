// The TCP data plane's frame prefix codec, and a server fed malformed or stalled connections: each
// is refused with an ack naming the problem and reported broken, without allocating absurd sizes or
// crashing.
#include "common/handoff/tcp/tcp_frame.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "boost/asio/write.hpp"
#include "common/handoff/tcp/tcp_handoff.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/handoff/fake_sink.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;
using testing::FakeSink;
using testing::MakeHandoff;

std::array<uint8_t, kFramePrefixBytes> Prefix(uint8_t kind, uint32_t metadata, uint64_t payload) {
  std::array<uint8_t, kFramePrefixBytes> bytes = {'I', 'C', 1, kind};
  std::memcpy(&bytes[4], &metadata, 4);
  std::memcpy(&bytes[8], &payload, 8);
  return bytes;
}

TEST(FramePrefix, RoundTripsAndMatchesTheDocumentedLayout) {
  const auto bytes = EncodeFramePrefix({FrameKind::kChunk, 300, 70000});
  EXPECT_EQ(bytes, Prefix(1, 300, 70000));
  absl::StatusOr<FramePrefix> back = DecodeFramePrefix(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, FrameKind::kChunk);
  EXPECT_EQ(back->metadata_bytes, 300u);
  EXPECT_EQ(back->payload_bytes, 70000u);
}

TEST(FramePrefix, RefusesBadMagicVersionKindAndSizes) {
  auto bad_magic = Prefix(1, 0, 0);
  bad_magic[0] = 'X';
  EXPECT_THAT(DecodeFramePrefix(bad_magic).status().message(), HasSubstr("magic"));
  auto bad_version = Prefix(1, 0, 0);
  bad_version[2] = 9;
  EXPECT_THAT(DecodeFramePrefix(bad_version).status().message(), HasSubstr("version 9"));
  EXPECT_THAT(DecodeFramePrefix(Prefix(7, 0, 0)).status().message(), HasSubstr("kind 7"));
  EXPECT_THAT(DecodeFramePrefix(Prefix(1, 0xffffffffu, 0)).status().message(), HasSubstr("metadata"));
  EXPECT_THAT(DecodeFramePrefix(Prefix(1, 0, uint64_t{1} << 62)).status().message(), HasSubstr("payload"));
  EXPECT_TRUE(DecodeFramePrefix(Prefix(1, kMaxFrameMetadataBytes, kMaxFramePayloadBytes)).ok());
}

class TcpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink_, {.io_timeout = absl::Milliseconds(500)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // Opens a raw connection to the server.
  std::unique_ptr<FramedConnection> Open() {
    auto connection = std::make_unique<FramedConnection>(absl::Seconds(5));
    absl::StatusOr<HostPort> target = SplitHostPort(server_->address());
    EXPECT_TRUE(target.ok());
    EXPECT_TRUE(connection->Connect(target->host, target->port, absl::Seconds(5)).ok());
    return connection;
  }

  // Writes raw bytes, then reads the server's ack.
  v1::HandoffAck SendRawAndReadAck(FramedConnection& connection, const std::string& bytes) {
    boost::system::error_code ec;
    boost::asio::write(connection.socket(), boost::asio::buffer(bytes), ec);
    EXPECT_FALSE(ec) << ec.message();
    return ReadAck(connection);
  }

  v1::HandoffAck ReadAck(FramedConnection& connection) {
    v1::HandoffAck ack;
    absl::StatusOr<FramePrefix> prefix = connection.ReadPrefix();
    EXPECT_TRUE(prefix.ok()) << prefix.status();
    if (!prefix.ok()) return ack;
    EXPECT_EQ(prefix->kind, FrameKind::kAck);
    std::string metadata(prefix->metadata_bytes, '\0');
    EXPECT_TRUE(connection.ReadExactly(metadata.data(), metadata.size()).ok());
    EXPECT_TRUE(ack.ParseFromString(metadata));
    return ack;
  }

  static std::string Bytes(const std::array<uint8_t, kFramePrefixBytes>& prefix) {
    return std::string(prefix.begin(), prefix.end());
  }

  void ExpectRefused(const std::string& bytes, const std::string& why) {
    std::unique_ptr<FramedConnection> connection = Open();
    v1::HandoffAck ack = SendRawAndReadAck(*connection, bytes);
    EXPECT_FALSE(ack.accepted());
    EXPECT_THAT(ack.error(), HasSubstr(why));
    ASSERT_TRUE(sink_.WaitForEnd());
    ASSERT_EQ(sink_.broken().size(), 1u);
    EXPECT_THAT(sink_.broken()[0].second.message(), HasSubstr(why));
    EXPECT_TRUE(sink_.completed().empty());
  }

  FakeSink sink_;
  std::unique_ptr<TcpHandoffServer> server_;
};

// The header of request `id` as the `n`-th chunk FakeSink (one stream's sink) accepts: tests that
// open several connections to one server write their headers one after another. `rows_width`, when
// set, is the width it announces for rows of both kinds (7 f32 rows of it make a rows frame's most).
std::string NthHeader(const std::string& id, uint32_t n, int32_t rows_width = 0) {
  v1::HandoffChunk header = MakeHandoff(id, {})[0];
  header.set_sequence(n);
  if (rows_width > 0) {
    header.mutable_header()->set_latent_dim(rows_width);
    header.mutable_header()->set_index_key_dim(rows_width);
  }
  SealChunk(header);
  return header.SerializeAsString();
}

// This process's resident memory, from /proc.
size_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

TEST_F(TcpServerTest, BadMagicIsRefused) {
  std::string bytes = Bytes(Prefix(1, 0, 0));
  bytes[1] = 'Z';
  ExpectRefused(bytes, "magic");
}

TEST_F(TcpServerTest, HugeMetadataLengthIsRefusedWithoutAllocating) {
  ExpectRefused(Bytes(Prefix(1, 0xfffffff0u, 0)), "exceeds");
}

TEST_F(TcpServerTest, HugePayloadLengthIsRefused) { ExpectRefused(Bytes(Prefix(1, 10, uint64_t{1} << 60)), "exceeds"); }

TEST_F(TcpServerTest, MetadataThatIsNotAChunkIsRefused) {
  ExpectRefused(Bytes(Prefix(1, 4, 0)) + std::string("\xff\xff\xff\xff", 4), "not a HandoffChunk");
}

TEST_F(TcpServerTest, PayloadOnAHeaderChunkIsRefused) {
  const std::string header = MakeHandoff("r", {})[0].SerializeAsString();
  ExpectRefused(Bytes(Prefix(1, static_cast<uint32_t>(header.size()), 3)) + header + "abc", "payload");
}

// A rows frame may carry no more than its metadata's rows take at the widths and dtype the header
// announced: MakeHandoff's header for 8-byte rows announces width 1, so 7 f32 rows are 28 bytes. One
// byte more is refused as soon as the metadata is read: the payload is never sent here, and a server
// that waited for it would end at its 500 ms I/O timeout instead, with another message.
TEST_F(TcpServerTest, ARowsFrameLargerThanItsHeaderAllowsIsRefusedBeforeItsPayload) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("liar", {8});
  const std::string header = chunks[0].SerializeAsString();
  const std::string metadata = WithoutRowsData(chunks[1]).SerializeAsString();
  const absl::Time start = absl::Now();
  ExpectRefused(Bytes(Prefix(1, static_cast<uint32_t>(header.size()), 0)) + header +
                    Bytes(Prefix(1, static_cast<uint32_t>(metadata.size()), 29)) + metadata,
                "allow at most 28");
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(450));
}

TEST_F(TcpServerTest, RowsBeforeTheHeaderAreRefused) {
  const std::string metadata = WithoutRowsData(MakeHandoff("headless", {8})[1]).SerializeAsString();
  ExpectRefused(Bytes(Prefix(1, static_cast<uint32_t>(metadata.size()), 8)) + metadata + std::string(8, 'r'),
                "before the handoff's header");
}

TEST_F(TcpServerTest, AckFromTheSenderIsRefused) { ExpectRefused(Bytes(Prefix(3, 0, 0)), "ack frame"); }

TEST_F(TcpServerTest, SecondRequestOnOneConnectionIsRefused) {
  std::unique_ptr<FramedConnection> connection = Open();
  const v1::HandoffChunk first = MakeHandoff("one", {})[0];
  v1::HandoffChunk second = MakeHandoff("two", {8})[1];
  second.set_sequence(1);
  SealChunk(second);
  ASSERT_TRUE(connection->WriteFrame(FrameKind::kChunk, first.SerializeAsString(), {}).ok());
  ASSERT_TRUE(connection->WriteFrame(FrameKind::kChunk, second.SerializeAsString(), {}).ok());
  v1::HandoffAck ack = ReadAck(*connection);
  EXPECT_FALSE(ack.accepted());
  EXPECT_THAT(ack.error(), HasSubstr("one request"));
  ASSERT_TRUE(sink_.WaitForEnd());
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "one");
}

TEST_F(TcpServerTest, SilentSenderTimesOut) {
  std::unique_ptr<FramedConnection> connection = Open();
  const v1::HandoffChunk header = MakeHandoff("quiet", {})[0];
  ASSERT_TRUE(connection->WriteFrame(FrameKind::kChunk, header.SerializeAsString(), {}).ok());
  ASSERT_TRUE(sink_.WaitForEnd());  // the server's 500 ms I/O timeout
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "quiet");
  EXPECT_EQ(sink_.broken()[0].second.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(TcpServerTest, RowsLargerThanTheEagerReadArriveIntact) {
  // 9 MiB + 1 byte: read past the first 4 MiB in growing steps.
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("large", {(size_t{9} << 20) + 1});
  auto sender = TcpHandoffSender::Connect(server_->address(), absl::Seconds(5));
  ASSERT_TRUE(sender.ok()) << sender.status();
  for (const v1::HandoffChunk& chunk : chunks) ASSERT_TRUE((*sender)->Send(chunk).ok());
  absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->accepted()) << ack->error();
  ASSERT_EQ(sink_.chunks().size(), chunks.size());
  EXPECT_EQ(sink_.chunks()[1].rows().data(), chunks[1].rows().data());
}

TEST_F(TcpServerTest, AnnouncedPayloadsAreNotAllocatedBeforeTheirBytes) {
  // The probe: idle connections announcing 60 MiB rows each. The server may hold
  // kEagerReadBytes a connection, not what a frame announces (12 × 60 MiB).
  constexpr int kConnections = 12;
  constexpr uint64_t kAnnounced = uint64_t{60} << 20;
  const size_t before = ResidentBytes();
  std::vector<std::unique_ptr<FramedConnection>> idle;
  for (int i = 0; i < kConnections; ++i) {
    const std::string id = "idle-" + std::to_string(i);
    std::vector<v1::HandoffChunk> chunks = MakeHandoff(id, {8});
    idle.push_back(Open());
    // A header whose rows may be that large (7 rows of width kAnnounced / 28, in f32).
    ASSERT_TRUE(
        idle.back()->WriteFrame(FrameKind::kChunk, NthHeader(id, i, static_cast<int32_t>(kAnnounced / 28 + 1)), {}).ok());
    ASSERT_TRUE(sink_.WaitForChunks(i + 1));
    const std::string metadata = WithoutRowsData(chunks[1]).SerializeAsString();
    boost::system::error_code ec;
    boost::asio::write(idle.back()->socket(),
                       boost::asio::buffer(Bytes(Prefix(1, static_cast<uint32_t>(metadata.size()), kAnnounced)) +
                                           metadata + "only these bytes"),
                       ec);
    ASSERT_FALSE(ec) << ec.message();
  }
  // Every header was read: each connection's server thread goes on to its rows frame.
  // Within the server's 500 ms I/O timeout, watch whether the announced sizes get allocated.
  size_t grown = 0;
  for (int i = 0; i < 30; ++i) {
    const size_t now = ResidentBytes();
    if (now > before) grown = std::max(grown, now - before);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // kEagerReadBytes a connection, and as much again of slack for everything else in this process.
  EXPECT_LT(grown, kConnections * 2 * kEagerReadBytes) << "resident memory grew by " << (grown >> 20) << " MiB";
}

TEST(TcpServerCapTest, ConnectionsPastTheCapAreClosedAtOnce) {
  FakeSink sink;
  auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink, {.io_timeout = absl::Seconds(5), .max_connections = 2});
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<HostPort> target = SplitHostPort((*server)->address());
  ASSERT_TRUE(target.ok());
  auto open = [&] {
    auto connection = std::make_unique<FramedConnection>(absl::Seconds(5));
    EXPECT_TRUE(connection->Connect(target->host, target->port, absl::Seconds(5)).ok());
    return connection;
  };
  std::vector<std::unique_ptr<FramedConnection>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(open());
    ASSERT_TRUE(held.back()->WriteFrame(FrameKind::kChunk, NthHeader("held-" + std::to_string(i), i), {}).ok());
    ASSERT_TRUE(sink.WaitForChunks(i + 1));  // being served
  }
  std::unique_ptr<FramedConnection> third = open();
  const absl::Time start = absl::Now();
  absl::StatusOr<FramePrefix> answer = third->ReadPrefix();
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kUnavailable) << answer.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));  // closed by the server, not timed out
  EXPECT_TRUE(sink.broken().empty());  // the two served ones are untouched
}

TEST_F(TcpServerTest, ShutdownBreaksOpenHandoffsPromptly) {
  auto sender = TcpHandoffSender::Connect(server_->address(), absl::Seconds(5), {.io_timeout = absl::Seconds(30)});
  ASSERT_TRUE(sender.ok()) << sender.status();
  ASSERT_TRUE((*sender)->Send(MakeHandoff("open", {})[0]).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the server read the header
  const absl::Time start = absl::Now();
  server_->Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(400));  // not the I/O timeout
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "open");
  EXPECT_FALSE((*sender)->Finish().ok());  // no verdict from a server that is gone
}

}  // namespace
}  // namespace indexcache
