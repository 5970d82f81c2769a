#include "common/handoff/tcp/sender_verdict.h"

#include "common/util/status_macros.h"

namespace indexcache {
namespace {

absl::Status AcceptedBeforeEnd() {
  return absl::InternalError("the decode worker accepted the handoff before its end");
}

}  // namespace

absl::Status SenderVerdict::CheckCanSend() const {
  if (!outcome_.ok()) return outcome_;
  if (have_ack_) return absl::FailedPreconditionError("the handoff already ended; no more chunks can be sent");
  return absl::OkStatus();
}

void SenderVerdict::Read() {
  absl::StatusOr<v1::HandoffAck> ack = ReadAckFrame(connection_);
  if (!ack.ok()) {
    outcome_ = Annotate(ack.status(), "reading the decode worker's handoff verdict");
    return;
  }
  ack_ = *std::move(ack);
  have_ack_ = true;
  outcome_ = AckStatus(ack_);
}

absl::Status SenderVerdict::TakeEarlyAck() {
  Read();
  if (outcome_.ok()) outcome_ = AcceptedBeforeEnd();
  return outcome_;
}

absl::Status SenderVerdict::AfterFailedWrite(const absl::Status& write_error) {
  Read();
  if (!have_ack_) return outcome_ = write_error;
  if (outcome_.ok()) outcome_ = AcceptedBeforeEnd();
  return outcome_;
}

absl::StatusOr<v1::HandoffAck> SenderVerdict::Finish(HandoffByteCounts& bytes) {
  if (!have_ack_) {
    if (!outcome_.ok()) return outcome_;
    absl::Status sent = connection_.WriteFrame(FrameKind::kEnd, {}, {});
    bytes.metadata_bytes += kFramePrefixBytes;
    Read();
    if (!have_ack_) return sent.ok() ? outcome_ : sent;
  }
  connection_.Close();
  return ack_;
}

}  // namespace indexcache
