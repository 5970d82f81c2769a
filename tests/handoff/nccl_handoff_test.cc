// The NCCL handoff's logic over the in-process loopback channel (tests/handoff/loopback_channel.h):
// the unique id travels on the control channel and one communicator per pair is made once and reused;
// chunks arrive in order with bytes intact, also from concurrent handoffs sharing a communicator;
// a corrupted chunk is rejected with DATA_LOSS and a sender that keeps sending past the rejection is
// not stranded; a cancel breaks the stream; a peer that never receives fails the send within the
// timeout and its communicator is dropped; a restarted decode worker gets a new communicator; bad
// control frames are refused. The same code runs over NCCL on two GPUs in tools/gpu/check_nccl.sh.
#include "common/handoff/nccl/nccl_handoff.h"

#include <map>
#include <thread>

#include "common/handoff/tcp/tcp_frame.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/handoff/fake_sink.h"
#include "tests/handoff/loopback_channel.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;
using testing::FakeSink;
using testing::LoopbackFabric;
using testing::LoopbackFactory;
using testing::MakeHandoff;

// Short, so the timeout paths run fast; long against a loaded 2-core CI machine.
constexpr absl::Duration kIoTimeout = absl::Seconds(5);

// Accepts every stream, keeping each request's chunks apart (FakeSink holds one stream).
class PerRequestSink : public HandoffSink {
 public:
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows /*rows: never landed*/) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<v1::HandoffChunk>& chunks = chunks_[chunk.request_id()];
    RETURN_IF_ERROR(VerifyChunkChecksum(chunk));
    if (chunk.sequence() != chunks.size()) return absl::DataLossError("out of sequence");
    chunks.push_back(chunk);
    return absl::OkStatus();
  }
  v1::HandoffAck OnComplete(const std::string&) override { return MakeAck(absl::OkStatus()); }
  void OnBroken(const std::string& request_id, const absl::Status& why) override {
    ADD_FAILURE() << request_id << " broke: " << why;
  }
  std::vector<v1::HandoffChunk> chunks(const std::string& request_id) {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_[request_id];
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<v1::HandoffChunk>> chunks_;
};

class NcclHandoffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartServer(0, &sink_);
    client_ = std::make_unique<NcclHandoffClient>(std::make_unique<LoopbackFactory>(fabric_),
                                                  NcclHandoffOptions{.io_timeout = kIoTimeout});
  }

  void StartServer(int port, HandoffSink* sink) {
    auto server = NcclHandoffServer::Start("127.0.0.1", port, sink, std::make_unique<LoopbackFactory>(fabric_),
                                           {.io_timeout = kIoTimeout});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<HandoffSender> Connect() {
    auto sender = client_->Connect(server_->address(), absl::Seconds(5));
    EXPECT_TRUE(sender.ok()) << sender.status();
    return sender.ok() ? *std::move(sender) : nullptr;
  }

  // Sends `chunks` and finishes; the verdict.
  absl::Status Push(const std::vector<v1::HandoffChunk>& chunks) {
    std::unique_ptr<HandoffSender> sender = Connect();
    if (sender == nullptr) return absl::UnavailableError("no connection");
    for (const v1::HandoffChunk& chunk : chunks) RETURN_IF_ERROR(sender->Send(chunk));
    absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
    return ack.ok() ? AckStatus(*ack) : ack.status();
  }

  int IdsMade() {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    return fabric_->ids_made;
  }

  std::shared_ptr<LoopbackFabric> fabric_ = std::make_shared<LoopbackFabric>();
  FakeSink sink_;
  std::unique_ptr<NcclHandoffServer> server_;
  std::unique_ptr<NcclHandoffClient> client_;
};

TEST_F(NcclHandoffTest, DeliversChunksInOrderWithBytesIntact) {
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
  const HandoffByteCounts& bytes = sender->bytes();
  EXPECT_EQ(bytes.latent_bytes, uint64_t{4096 + (5 << 20) + 12});
  EXPECT_EQ(bytes.index_key_bytes, uint64_t{1000});
  EXPECT_EQ(bytes.chunks, chunks.size());
}

TEST_F(NcclHandoffTest, OneCommunicatorPerPairMadeOnceFromAnIdSentOnTheControlChannel) {
  PerRequestSink sink;
  server_.reset();
  StartServer(0, &sink);
  for (int i = 0; i < 3; ++i) {
    const std::string id = "seq-" + std::to_string(i);
    ASSERT_TRUE(Push(MakeHandoff(id, {2048, 512})).ok());
    EXPECT_EQ(sink.chunks(id).size(), 4u);
  }
  EXPECT_EQ(IdsMade(), 1);
  EXPECT_EQ(client_->communicators(), 1u);
  EXPECT_EQ(server_->communicators(), 1u);
}

TEST_F(NcclHandoffTest, ConcurrentHandoffsShareTheCommunicatorInTicketOrder) {
  PerRequestSink sink;
  server_.reset();
  StartServer(0, &sink);
  constexpr int kHandoffs = 6;
  std::vector<std::vector<v1::HandoffChunk>> handoffs;
  for (int i = 0; i < kHandoffs; ++i) {
    handoffs.push_back(MakeHandoff("con-" + std::to_string(i), {3000, 100, 70000, 8, 4096, 1}));
  }
  std::vector<absl::Status> verdicts(kHandoffs);
  std::vector<std::thread> threads;
  for (int i = 0; i < kHandoffs; ++i) {
    threads.emplace_back([&, i] { verdicts[i] = Push(handoffs[i]); });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kHandoffs; ++i) {
    ASSERT_TRUE(verdicts[i].ok()) << i << ": " << verdicts[i];
    const std::vector<v1::HandoffChunk> got = sink.chunks(handoffs[i][0].request_id());
    ASSERT_EQ(got.size(), handoffs[i].size());
    for (size_t c = 0; c < got.size(); ++c) EXPECT_EQ(got[c].SerializeAsString(), handoffs[i][c].SerializeAsString());
  }
  EXPECT_EQ(IdsMade(), 1);  // the first handoff made it; the others waited for it to be joined
}

TEST_F(NcclHandoffTest, CorruptedChunkIsRejectedAndTheCommunicatorSurvives) {
  std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-2", {4096, 4096, 4096, 4096, 4096});
  (*chunks[2].mutable_rows()->mutable_data())[100] ^= 0x01;  // after sealing
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  // Keep sending past the corrupted chunk: the decode worker, having rejected, still receives the
  // tickets of frames already written, so no Send is stranded in its GPU transfer.
  absl::Status send_error;
  for (const v1::HandoffChunk& chunk : chunks) {
    send_error = sender->Send(chunk);
    if (!send_error.ok()) break;
  }
  if (!send_error.ok()) {
    EXPECT_EQ(send_error.code(), absl::StatusCode::kDataLoss) << send_error;
  } else {
    absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kDataLoss) << ack->error();
  }
  ASSERT_TRUE(sink_.WaitForEnd());
  EXPECT_EQ(sink_.rejected().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(sink_.chunks().size(), 2u);  // header and the first rows chunk

  // A rejection is the data's fault, not the communicator's: both ends keep it.
  EXPECT_EQ(client_->communicators(), 1u);
  EXPECT_EQ(server_->communicators(), 1u);
}

TEST_F(NcclHandoffTest, CancelledSenderBreaksTheStream) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-3", {4096, 4096});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  ASSERT_TRUE(sender->Send(chunks[0]).ok());
  ASSERT_TRUE(sender->Send(chunks[1]).ok());
  ASSERT_TRUE(sink_.WaitForChunks(2));
  sender->Cancel();
  EXPECT_EQ(sender->Send(chunks[2]).code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(sender->Finish().ok());
  ASSERT_TRUE(sink_.WaitForEnd());
  ASSERT_EQ(sink_.broken().size(), 1u);
  EXPECT_EQ(sink_.broken()[0].first, "req-3");
  EXPECT_TRUE(sink_.completed().empty());
}

TEST_F(NcclHandoffTest, StreamEndingBeforeTheTrailerIsBroken) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-4", {64});
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  ASSERT_TRUE(sender->Send(chunks[0]).ok());
  absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_THAT(ack->error(), HasSubstr("before its trailer"));
  ASSERT_TRUE(sink_.WaitForEnd());
  ASSERT_EQ(sink_.broken().size(), 1u);
}

// A decode worker that accepts the communicator, reads a rows chunk's control frame and then never
// receives its bytes (hung, or its GPU side died).
class SilentPeer {
 public:
  explicit SilentPeer(std::shared_ptr<LoopbackFabric> fabric) : factory_(std::move(fabric)) {
    auto server = TcpHandoffServer::StartWithHandler(
        "127.0.0.1", 0,
        [this](FramedConnection& connection) {
          auto prefix = connection.ReadPrefix();
          if (!prefix.ok()) return;
          std::string metadata(prefix->metadata_bytes, '\0');
          if (!connection.ReadExactly(metadata.data(), metadata.size()).ok()) return;
          v1::NcclControl open;
          if (!open.ParseFromString(metadata)) return;
          if (!connection.WriteFrame(FrameKind::kAck, MakeAck(absl::OkStatus()).SerializeAsString(), {}).ok()) return;
          auto channel = factory_.Join(open.open().unique_id(), 1, absl::Now() + kIoTimeout);
          if (!channel.ok()) return;
          // Read the header's and the rows chunk's control frames, and never receive the rows.
          for (;;) {
            auto next = connection.ReadPrefix();
            if (!next.ok()) return;
            std::string skipped(next->metadata_bytes, '\0');
            if (!connection.ReadExactly(skipped.data(), skipped.size()).ok()) return;
          }
        },
        {.io_timeout = absl::Seconds(30)});
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  const std::string& address() const { return server_->address(); }

 private:
  LoopbackFactory factory_;
  std::unique_ptr<TcpHandoffServer> server_;
};

TEST_F(NcclHandoffTest, APeerThatNeverReceivesFailsTheSendInTimeAndDropsTheCommunicator) {
  SilentPeer peer(fabric_);
  auto sender = client_->Connect(peer.address(), absl::Seconds(5));
  ASSERT_TRUE(sender.ok()) << sender.status();
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-6", {4096});
  ASSERT_TRUE((*sender)->Send(chunks[0]).ok());
  const absl::Time start = absl::Now();
  absl::Status sent = (*sender)->Send(chunks[1]);
  EXPECT_EQ(sent.code(), absl::StatusCode::kDeadlineExceeded) << sent;
  EXPECT_LT(absl::Now() - start, kIoTimeout + absl::Seconds(3));
  EXPECT_EQ(client_->communicators(), 0u);  // the only pair, to the silent peer, was aborted
  EXPECT_FALSE((*sender)->Send(chunks[2]).ok());
}

TEST_F(NcclHandoffTest, ARestartedDecodeWorkerGetsANewCommunicator) {
  ASSERT_TRUE(Push(MakeHandoff("before", {256})).ok());
  const std::string address = server_->address();
  const int port = std::stoi(address.substr(address.rfind(':') + 1));
  server_.reset();  // the decode worker restarts on the same port and knows no communicator
  FakeSink fresh;
  StartServer(port, &fresh);
  ASSERT_TRUE(Push(MakeHandoff("after", {256})).ok());
  EXPECT_EQ(fresh.completed(), std::vector<std::string>{"after"});
  EXPECT_EQ(IdsMade(), 2);
  EXPECT_EQ(client_->communicators(), 1u);
}

TEST_F(NcclHandoffTest, AConnectionThatDoesNotOpenIsRefused) {
  FramedConnection connection(kIoTimeout);
  const std::string address = server_->address();
  ASSERT_TRUE(connection.Connect("127.0.0.1", static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))),
                                 absl::Seconds(5))
                  .ok());
  v1::NcclControl control;
  *control.mutable_chunk() = MakeHandoff("req-7", {})[0];
  ASSERT_TRUE(connection.WriteFrame(FrameKind::kChunk, control.SerializeAsString(), {}).ok());
  absl::StatusOr<v1::HandoffAck> ack = ReadAckFrame(connection);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ack->error(), HasSubstr("NcclOpen"));
  EXPECT_TRUE(sink_.chunks().empty());
}

TEST_F(NcclHandoffTest, ReusingAnUnknownCommunicatorIsNotFound) {
  FramedConnection connection(kIoTimeout);
  const std::string address = server_->address();
  ASSERT_TRUE(connection.Connect("127.0.0.1", static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))),
                                 absl::Seconds(5))
                  .ok());
  v1::NcclControl open;
  open.mutable_open()->set_communicator("never-made");
  ASSERT_TRUE(connection.WriteFrame(FrameKind::kChunk, open.SerializeAsString(), {}).ok());
  absl::StatusOr<v1::HandoffAck> ack = ReadAckFrame(connection);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(AckStatus(*ack).code(), absl::StatusCode::kNotFound);
}

// Both ends with their rows in device memory (NcclHandoffOptions::rows kDevice; the loopback's
// "device" memory is host memory, as on the CPU backend).
class NcclDeviceRowsTest : public NcclHandoffTest {
 protected:
  void SetUp() override {
    auto server = NcclHandoffServer::Start("127.0.0.1", 0, &sink_, std::make_unique<LoopbackFactory>(fabric_),
                                           {.io_timeout = kIoTimeout, .rows = RowsMemory::kDevice});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = std::make_unique<NcclHandoffClient>(
        std::make_unique<LoopbackFactory>(fabric_),
        NcclHandoffOptions{.io_timeout = kIoTimeout, .rows = RowsMemory::kDevice});
  }

  // Sends `chunks` as a prefill worker with device staging does: rows bytes apart from the message and
  // unsealed (SendDeviceRows), header and trailer as usual; then finishes. The verdict.
  absl::Status PushFromDevice(const std::vector<v1::HandoffChunk>& chunks) {
    std::unique_ptr<HandoffSender> sender = Connect();
    if (sender == nullptr) return absl::UnavailableError("no connection");
    for (const v1::HandoffChunk& chunk : chunks) {
      if (!chunk.has_rows() || chunk.rows().data().empty()) {
        RETURN_IF_ERROR(sender->Send(chunk));
        continue;
      }
      v1::HandoffChunk meta = chunk;
      const std::string rows = std::move(*meta.mutable_rows()->mutable_data());
      meta.mutable_rows()->clear_data();
      meta.clear_checksum();  // the transport seals it from the GPU's CRC
      RETURN_IF_ERROR(sender->SendDeviceRows(meta, rows.data(), rows.size()));
    }
    absl::StatusOr<v1::HandoffAck> ack = sender->Finish();
    return ack.ok() ? AckStatus(*ack) : ack.status();
  }

  int DeviceCrcs() {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    return fabric_->device_crcs;
  }
};

TEST_F(NcclDeviceRowsTest, RowsGoFromDeviceMemoryIntoTheSinksDeviceAreaSealedAsOnTheHost) {
  EXPECT_TRUE(client_->capabilities().device_memory);
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-d", {4096, 1000, 3 << 20, 0, 12});
  ASSERT_TRUE(PushFromDevice(chunks).ok());

  // Every rows chunk landed in device memory, checksummed on each end's GPU; the checksum the sender
  // sealed from the rows' CRC equals the one the host computes over the whole body (MakeHandoff's).
  EXPECT_EQ(sink_.landed_on_device(), 4);
  EXPECT_EQ(DeviceCrcs(), 8);
  const std::vector<v1::HandoffChunk> got = sink_.chunks();
  ASSERT_EQ(got.size(), chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(got[i].SerializeAsString(), chunks[i].SerializeAsString()) << "chunk " << i;
  }
  EXPECT_EQ(sink_.completed(), std::vector<std::string>{"req-d"});
}

TEST_F(NcclDeviceRowsTest, RowsCorruptedOnTheWayAreRejectedByTheirDeviceChecksum) {
  const std::vector<v1::HandoffChunk> chunks = MakeHandoff("req-e", {4096, 4096, 4096});
  {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    fabric_->corrupt_send = 2;  // the second rows payload loses a bit in transit
  }
  const absl::Status verdict = PushFromDevice(chunks);
  EXPECT_EQ(verdict.code(), absl::StatusCode::kDataLoss) << verdict;
  ASSERT_TRUE(sink_.WaitForEnd());
  EXPECT_EQ(sink_.rejected().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(sink_.chunks().size(), 2u);  // header and the first rows chunk
  EXPECT_EQ(client_->communicators(), 1u) << "the data's fault, not the communicator's";
}

TEST_F(NcclHandoffTest, ATransportWithoutDeviceMemoryRefusesDeviceRows) {
  EXPECT_FALSE(client_->capabilities().device_memory);
  std::unique_ptr<HandoffSender> sender = Connect();
  ASSERT_NE(sender, nullptr);
  v1::HandoffChunk meta = MakeHandoff("req-f", {64})[1];
  const std::string rows = meta.rows().data();
  meta.mutable_rows()->clear_data();
  EXPECT_EQ(sender->SendDeviceRows(meta, rows.data(), rows.size()).code(), absl::StatusCode::kFailedPrecondition);
  sender->Cancel();
}

TEST(NcclChannelFactory, ABadGpuOrdinalIsAnErrorNotACrash) {
  // UNIMPLEMENTED without NCCL in the build; otherwise the ordinal is checked against the machine's GPUs.
  auto factory = MakeNcclChannelFactory(-1);
  EXPECT_FALSE(factory.ok());
  EXPECT_FALSE(factory.status().message().empty());
}

}  // namespace
}  // namespace indexcache
