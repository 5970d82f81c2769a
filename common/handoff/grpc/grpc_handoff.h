// The gRPC handoff transport: the prefill worker streams HandoffChunks over a client-streaming
// KvHandoff.Push call to the decode worker's gRPC server, which answers the HandoffAck.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "common/handoff/handoff_transport.h"
#include "grpcpp/grpcpp.h"
#include "indexcache/v1/internal.grpc.pb.h"

namespace indexcache {

// Serves KvHandoff.Push: one call carries one handoff. Chunks go to `sink` in order; the first error
// ends the call with HandoffAck{accepted=false, error} (gRPC status OK, so the ack reaches the
// sender); a call that ends without an accepted trailer — the sender cancelled or vanished — is
// reported to the sink as broken. Register it on a server whose max receive message size is at least
// kMaxHandoffChunkBytes. A call without `token` (grpc_token.h) is UNAUTHENTICATED before any chunk is read.
class KvHandoffService final : public v1::KvHandoff::Service {
 public:
  explicit KvHandoffService(HandoffSink* sink, ClusterToken token = {}) : sink_(sink), token_(std::move(token)) {}

  grpc::Status Push(grpc::ServerContext* context, grpc::ServerReader<v1::HandoffChunk>* reader,
                    v1::HandoffAck* ack) override;

 private:
  HandoffSink* sink_;
  const ClusterToken token_;
};

// Client side: one Push call. Send blocks while gRPC flow control holds the stream back.
class GrpcHandoffSender final : public HandoffSender {
 public:
  // Waits up to `connect_timeout` for the channel to `address` ("host:port") to connect. The call
  // carries `token`.
  static absl::StatusOr<std::unique_ptr<GrpcHandoffSender>> Connect(const std::string& address,
                                                                    absl::Duration connect_timeout,
                                                                    const ClusterToken& token = {});
  ~GrpcHandoffSender() override;

  using HandoffSender::Send;
  // gRPC serializes whole messages: rows held outside `chunk` are copied into one first.
  absl::Status Send(const v1::HandoffChunk& chunk, std::string_view rows_data) override;
  absl::StatusOr<v1::HandoffAck> Finish() override;
  void Cancel() override;
  const HandoffByteCounts& bytes() const override { return bytes_; }

 private:
  GrpcHandoffSender() = default;
  // Ends the call (once) and records its outcome in ack_/final_.
  void EndCall();

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvHandoff::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientWriter<v1::HandoffChunk>> writer_;
  v1::HandoffAck ack_;
  bool ended_ = false;
  absl::Status final_;  // the call's outcome once ended_: OK with ack_, or why no ack came
  HandoffByteCounts bytes_;
};

// The transport's entry in a worker's HandoffTransports: GrpcHandoffSender::Connect, nothing kept
// between handoffs (a fresh channel each), every call carrying `token`.
class GrpcHandoffConnector final : public HandoffConnector {
 public:
  explicit GrpcHandoffConnector(ClusterToken token = {}) : token_(std::move(token)) {}
  v1::HandoffTransport transport() const override { return v1::HANDOFF_TRANSPORT_GRPC; }
  std::string_view name() const override { return "grpc"; }
  HandoffCapabilities capabilities() const override { return {}; }
  absl::StatusOr<std::unique_ptr<HandoffSender>> Connect(const std::string& address,
                                                         absl::Duration connect_timeout) override;

 private:
  const ClusterToken token_;
};

}  // namespace indexcache
