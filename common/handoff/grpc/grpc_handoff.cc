#include "common/handoff/grpc/grpc_handoff.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/auth/grpc_token.h"
#include "common/util/logging.h"

namespace indexcache {
namespace {

// gRPC frames each message with a 1-byte compression flag and a 4-byte length.
constexpr uint64_t kGrpcMessagePrefixBytes = 5;

absl::Status FromGrpc(const grpc::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(context, ": ", status.error_message()));
}

}  // namespace

grpc::Status KvHandoffService::Push(grpc::ServerContext* context, grpc::ServerReader<v1::HandoffChunk>* reader,
                                    v1::HandoffAck* ack) {
  if (grpc::Status auth = CheckCallToken(*context, token_); !auth.ok()) return auth;
  std::string request_id;
  bool trailer_accepted = false;
  v1::HandoffChunk chunk;
  while (reader->Read(&chunk)) {
    if (request_id.empty()) request_id = chunk.request_id();
    absl::Status malformed;
    if (chunk.request_id() != request_id) {
      malformed = absl::InvalidArgumentError(absl::StrFormat(
          "a handoff stream carries one request: chunk %d names '%s' after '%s'", chunk.sequence(),
          chunk.request_id(), request_id));
    } else if (trailer_accepted) {
      malformed = absl::InvalidArgumentError(
          absl::StrFormat("request '%s': chunk %d arrived after the trailer", request_id, chunk.sequence()));
    }
    if (!malformed.ok()) {
      sink_->OnBroken(request_id, malformed);
      *ack = MakeAck(malformed);
      return grpc::Status::OK;
    }
    if (absl::Status verdict = sink_->OnChunk(chunk, LandedRows{}); !verdict.ok()) {
      IC_LOG(Debug) << "handoff of request '" << request_id << "' rejected: " << verdict;
      *ack = MakeAck(verdict);
      return grpc::Status::OK;
    }
    trailer_accepted = chunk.has_trailer();
  }
  if (context->IsCancelled()) {
    sink_->OnBroken(request_id, absl::CancelledError(absl::StrFormat(
                                    "the handoff stream of request '%s' was cancelled by its sender", request_id)));
    return grpc::Status(grpc::StatusCode::CANCELLED, "handoff stream cancelled");
  }
  if (!trailer_accepted) {
    const absl::Status why = absl::AbortedError(
        absl::StrFormat("the handoff stream of request '%s' ended before its trailer", request_id));
    sink_->OnBroken(request_id, why);
    *ack = MakeAck(why);
    return grpc::Status::OK;
  }
  *ack = sink_->OnComplete(request_id);
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<GrpcHandoffSender>> GrpcHandoffSender::Connect(const std::string& address,
                                                                              absl::Duration connect_timeout,
                                                                              const ClusterToken& token) {
  std::unique_ptr<GrpcHandoffSender> sender(new GrpcHandoffSender());
  sender->channel_ = InternalChannel(address, token);
  if (!sender->channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout))) {
    return absl::UnavailableError(absl::StrCat("could not connect to the decode worker's gRPC handoff endpoint ",
                                               address, " within ", absl::FormatDuration(connect_timeout)));
  }
  sender->stub_ = v1::KvHandoff::NewStub(sender->channel_);
  sender->writer_ = sender->stub_->Push(&sender->context_, &sender->ack_);
  return sender;
}

GrpcHandoffSender::~GrpcHandoffSender() {
  if (writer_ != nullptr && !ended_) {
    context_.TryCancel();
    EndCall();
  }
}

void GrpcHandoffSender::EndCall() {
  if (ended_) return;
  ended_ = true;
  writer_->WritesDone();
  final_ = FromGrpc(writer_->Finish(), "the gRPC handoff call failed");
}

absl::Status GrpcHandoffSender::Send(const v1::HandoffChunk& chunk, std::string_view rows_data) {
  if (!ended_) {
    v1::HandoffChunk whole;
    if (!rows_data.empty()) {
      whole = chunk;
      whole.mutable_rows()->set_data(rows_data.data(), rows_data.size());
    }
    const v1::HandoffChunk& message = rows_data.empty() ? chunk : whole;
    const uint64_t wire_bytes = message.ByteSizeLong() + kGrpcMessagePrefixBytes;
    if (writer_->Write(message)) {
      CountChunkBytes(message, {}, wire_bytes, bytes_);
      return absl::OkStatus();
    }
    // The stream is gone: the decode worker answered early (a rejection), or the call broke.
    EndCall();
  }
  if (!final_.ok()) return final_;
  if (!ack_.accepted()) return AckStatus(ack_);
  return absl::FailedPreconditionError("the handoff already ended; no more chunks can be sent");
}

absl::StatusOr<v1::HandoffAck> GrpcHandoffSender::Finish() {
  EndCall();
  if (!final_.ok()) return final_;
  return ack_;
}

void GrpcHandoffSender::Cancel() { context_.TryCancel(); }

absl::StatusOr<std::unique_ptr<HandoffSender>> GrpcHandoffConnector::Connect(const std::string& address,
                                                                             absl::Duration connect_timeout) {
  return GrpcHandoffSender::Connect(address, connect_timeout, token_);
}

}  // namespace indexcache
