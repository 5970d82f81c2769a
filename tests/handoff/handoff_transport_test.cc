// Both handoff transports end to end on loopback against a fake sink: delivery in order with bytes
// intact, rejection of a corrupted chunk, a sender cancelled mid-stream, a stream cut before its
// trailer; and the checksum against zlib directly, also of rows stood for by their CRC (device rows).
#include <zlib.h>

#include <memory>
#include <thread>

#include "common/handoff/grpc/grpc_handoff.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/handoff_transports.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/handoff/fake_sink.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;
using testing::FakeSink;
using testing::MakeHandoff;

TEST(ChunkChecksum, IsZlibCrc32OfTheSerializedBody) {
  // 200 KB of rows: several of the checksum stream's 64 KB buffers.
  for (const v1::HandoffChunk& chunk : MakeHandoff("r", {200 * 1024, 10})) {
    std::string body;
    if (chunk.has_header()) body = chunk.header().SerializeAsString();
    if (chunk.has_rows()) body = chunk.rows().SerializeAsString();
    if (chunk.has_trailer()) body = chunk.trailer().SerializeAsString();
    const uLong want = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(body.data()), body.size());
    EXPECT_EQ(ChunkChecksum(chunk), static_cast<uint32_t>(want));
    EXPECT_TRUE(VerifyChunkChecksum(chunk).ok());
  }
}

TEST(ChunkChecksum, AFlippedRowsByteIsDataLoss) {
  v1::HandoffChunk chunk = MakeHandoff("r", {1000})[1];
  (*chunk.mutable_rows()->mutable_data())[500] ^= 0x10;
  absl::Status status = VerifyChunkChecksum(chunk);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("corrupt"));
}

// Rows that lie in device memory are stood for by their own CRC-32: the chunk's checksum from it is
// zlib's over the whole serialized body, and a landed device range is checked by it (or refused
// without one).
TEST(ChunkChecksum, DeviceRowsAreCheckedByTheirOwnCrc) {
  for (size_t bytes : {size_t{1}, size_t{1000}, size_t{200 * 1024}}) {
    const v1::HandoffChunk chunk = MakeHandoff("r", {bytes})[1];
    const std::string body = chunk.rows().SerializeAsString();
    const uLong want = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(body.data()), body.size());
    std::string rows = chunk.rows().data();
    v1::HandoffChunk meta = chunk;
    meta.mutable_rows()->clear_data();
    const RowsCrc rows_crc{
        .crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(rows.data()), rows.size())),
        .bytes = rows.size()};
    EXPECT_EQ(ChunkChecksum(meta, rows_crc), static_cast<uint32_t>(want)) << bytes << " bytes";

    LandedRows landed{.data = rows.data(), .size = rows.size(), .memory = RowsMemory::kDevice};
    EXPECT_EQ(VerifyChunkChecksum(meta, landed).code(), absl::StatusCode::kDataLoss) << "no CRC to check by";
    landed.crc = rows_crc.crc;
    EXPECT_TRUE(VerifyChunkChecksum(meta, landed).ok());
    landed.crc = rows_crc.crc ^ 1;
    EXPECT_EQ(VerifyChunkChecksum(meta, landed).code(), absl::StatusCode::kDataLoss);
  }
}

TEST(HandoffAck, CarriesTheRejectionCode) {
  EXPECT_TRUE(AckStatus(MakeAck(absl::OkStatus())).ok());
  absl::Status back = AckStatus(MakeAck(absl::DataLossError("chunk 3 is corrupt")));
  EXPECT_EQ(back.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(back.message(), HasSubstr("chunk 3 is corrupt"));
  v1::HandoffAck odd;
  odd.set_error("no code here");
  EXPECT_EQ(AckStatus(odd).code(), absl::StatusCode::kUnknown);
}

TEST(ConnectHandoff, NcclNeedsTheWorkersClient) {
  auto sender = ConnectHandoff(v1::HANDOFF_TRANSPORT_NCCL, "127.0.0.1:1", absl::Seconds(1));
  EXPECT_EQ(sender.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(sender.status().message(), HasSubstr("NCCL"));
}

class TransportTest : public ::testing::TestWithParam<v1::HandoffTransport> {
 protected:
  void SetUp() override {
    if (GetParam() == v1::HANDOFF_TRANSPORT_GRPC) {
      service_ = std::make_unique<KvHandoffService>(&sink_);
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxHandoffChunkBytes + (1 << 20)));
      builder.RegisterService(service_.get());
      grpc_server_ = builder.BuildAndStart();
      ASSERT_NE(grpc_server_, nullptr);
      address_ = "127.0.0.1:" + std::to_string(port);
    } else {
      auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink_, {.io_timeout = absl::Seconds(5)});
      ASSERT_TRUE(server.ok()) << server.status();
      tcp_server_ = *std::move(server);
      address_ = tcp_server_->address();
    }
  }
  void TearDown() override {
    if (grpc_server_) grpc_server_->Shutdown();
    if (tcp_server_) tcp_server_->Shutdown();
  }

  std::unique_ptr<HandoffSender> Connect() {
    auto sender = ConnectHandoff(GetParam(), address_, absl::Seconds(5));
    EXPECT_TRUE(sender.ok()) << sender.status();
    return sender.ok() ? *std::move(sender) : nullptr;
  }

  FakeSink sink_;
  std::string address_;
  std::unique_ptr<KvHandoffService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<TcpHandoffServer> tcp_server_;
};

TEST_P(TransportTest, DeliversChunksInOrderWithBytesIntact) {
  // A 5 MB chunk exceeds both transports' socket buffers, so Send has to wait on flow control.
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-1", {4096, 1000, 5 << 20, 0, 12});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  for (const v1::HandoffChunk& chunk : chunks) ASSERT_TRUE(sender->Send(chunk).ok());
  absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->accepted()) << ack->error();

  const std::vector<v1::HandoffChunk> got = sink_.chunks();
  ASSERT_EQ(got.size(), chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(got[i].SerializeAsString(), chunks[i].SerializeAsString()) << "chunk " << i;
  }
  EXPECT_EQ(sink_.completed(), std::vector<std::string>{"req-1"});
  EXPECT_TRUE(sink_.broken().empty());

  // Rows at even positions of MakeHandoff are LATENT, odd ones INDEX_KEY.
  const HandoffByteCounts& bytes = sender->bytes();
  EXPECT_EQ(bytes.latent_bytes, uint64_t{4096 + (5 << 20) + 12});
  EXPECT_EQ(bytes.index_key_bytes, uint64_t{1000});
  EXPECT_GT(bytes.metadata_bytes, 0u);
  EXPECT_EQ(bytes.chunks, chunks.size());
}

TEST_P(TransportTest, CorruptedChunkIsRejectedWithDataLoss) {
  std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-2", {4096, 4096, 4096});
  (*chunks[2].mutable_rows()->mutable_data())[100] ^= 0x01;  // after sealing
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  absl::Status send_error;
  for (const v1::HandoffChunk& chunk : chunks) {
    send_error = sender->Send(chunk);
    if (!send_error.ok()) break;
  }
  // The rejection reaches the sender by a failing Send or as Finish's verdict.
  if (!send_error.ok()) {
    EXPECT_EQ(send_error.code(), absl::StatusCode::kDataLoss) << send_error;
  } else {
    absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_FALSE(ack->accepted());
    EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kDataLoss) << ack->error();
  }
  ASSERT_TRUE(sink_.WaitForEnd());
  EXPECT_EQ(sink_.rejected().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(sink_.chunks().size(), 2u);  // header and the first rows chunk
  EXPECT_TRUE(sink_.completed().empty());
}

TEST_P(TransportTest, CancelledSenderBreaksTheStream) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-3", {4096, 4096});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  ASSERT_TRUE(sender->Send(chunks[0]).ok());
  ASSERT_TRUE(sender->Send(chunks[1]).ok());
  // Once read: a gRPC cancel discards unread messages, and a stream that names no request is nobody's.
  ASSERT_TRUE(sink_.WaitForChunks(2));
  sender->Cancel();
  EXPECT_FALSE(sender->Send(chunks[2]).ok());
  EXPECT_FALSE(sender->Finish().ok());
  ASSERT_TRUE(sink_.WaitForEnd());
  const auto broken = sink_.broken();
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_EQ(broken[0].first, "req-3");
  EXPECT_TRUE(sink_.completed().empty());
}

TEST_P(TransportTest, CancelAloneBreaksTheStream) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-5", {4096});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  ASSERT_TRUE(sender->Send(chunks[0]).ok());
  ASSERT_TRUE(sender->Send(chunks[1]).ok());
  ASSERT_TRUE(sink_.WaitForChunks(2));
  sender->Cancel();  // and nothing else: no Send, Finish or destruction
  ASSERT_TRUE(sink_.WaitForEnd());
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "req-5");
}

TEST_P(TransportTest, StreamEndingBeforeTheTrailerIsBroken) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-4", {64});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  ASSERT_TRUE(sender->Send(chunks[0]).ok());
  absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_FALSE(ack->accepted());
  EXPECT_THAT(ack->error(), HasSubstr("before its trailer"));
  ASSERT_TRUE(sink_.WaitForEnd());
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "req-4");
}

TEST_P(TransportTest, ConnectingToNothingFailsWithinTheTimeout) {
  TearDown();  // nothing listens on address_ any more
  grpc_server_.reset();
  tcp_server_.reset();
  const absl::Time start = absl::Now();
  auto sender = ConnectHandoff(GetParam(), address_, absl::Milliseconds(500));
  // gRPC connects lazily; either connecting or the first exchange must fail.
  if (sender.ok()) {
    absl::Status sent = (*sender)->Send(MakeHandoff("x", {})[0]);
    EXPECT_FALSE(sent.ok() && (*sender)->Finish().ok());
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// The TCP data plane reads a rows payload straight into memory the sink lands it in (the decode
// worker's pinned receive area), checksummed there; a byte flipped on the way is still DATA_LOSS.
TEST(TcpHandoff, RowsLandInTheSinksMemoryIntact) {
  for (bool corrupt : {false, true}) {
    FakeSink sink;
    sink.land_rows = true;
    auto server = TcpHandoffServer::Start("127.0.0.1", 0, &sink, {.io_timeout = absl::Seconds(5)});
    ASSERT_TRUE(server.ok()) << server.status();
    std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-land", {4096, 5 << 20, 0, 12});
    if (corrupt) (*chunks[2].mutable_rows()->mutable_data())[(5 << 20) - 1] ^= 0x10;
    auto sender = ConnectHandoff(v1::HANDOFF_TRANSPORT_TCP, (*server)->address(), absl::Seconds(5));
    ASSERT_TRUE(sender.ok()) << sender.status();
    for (const v1::HandoffChunk& chunk : chunks) {
      if (!(*sender)->Send(chunk).ok()) break;
    }
    absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
    ASSERT_TRUE(ack.ok()) << ack.status();
    if (corrupt) {
      EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kDataLoss) << ack->error();
      EXPECT_EQ(sink.chunks().size(), 2u);
      continue;
    }
    EXPECT_TRUE(ack->accepted()) << ack->error();
    const std::vector<v1::HandoffChunk> got = sink.chunks();
    ASSERT_EQ(got.size(), chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) {
      EXPECT_EQ(got[i].SerializeAsString(), chunks[i].SerializeAsString()) << "chunk " << i;
    }
    EXPECT_EQ(sink.landed(), 3);  // the three rows chunks with bytes; the empty one has no payload
  }
}

INSTANTIATE_TEST_SUITE_P(BothTransports, TransportTest,
                         ::testing::Values(v1::HANDOFF_TRANSPORT_GRPC, v1::HANDOFF_TRANSPORT_TCP),
                         [](const auto& info) { return info.param == v1::HANDOFF_TRANSPORT_GRPC ? "Grpc" : "Tcp"; });

}  // namespace
}  // namespace indexcache
