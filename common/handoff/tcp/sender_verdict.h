// The sender's half of a framed handoff's ending (TCP and NCCL transports): the decode worker answers
// every handoff with one ack frame — at the end, or early when it rejects — and the sender keeps the
// first failure or rejection, which every later call returns.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/handoff/tcp/tcp_frame.h"

namespace indexcache {

class SenderVerdict {
 public:
  explicit SenderVerdict(FramedConnection& connection) : connection_(connection) {}

  // OK while more chunks may go out; else the stored failure, or FAILED_PRECONDITION after the ack.
  absl::Status CheckCanSend() const;
  // An ack already waiting before a chunk goes out: the decode worker rejected the handoff; reads it
  // and returns why (stop before pushing rows it will discard).
  bool AckWaiting() const { return connection_.Available() > 0; }
  absl::Status TakeEarlyAck();
  // A write failed with `write_error`: the decode worker may have rejected and closed, in which case
  // its ack says why; else the write error is the failure.
  absl::Status AfterFailedWrite(const absl::Status& write_error);
  // Records a failure that later calls return.
  absl::Status Fail(const absl::Status& failure) { return outcome_ = failure; }
  // Sends the end frame (counted in `bytes`) unless the verdict is in, waits for the ack, closes the
  // connection and returns the ack; an error when no ack came.
  absl::StatusOr<v1::HandoffAck> Finish(HandoffByteCounts& bytes);

 private:
  // Reads the ack frame into ack_ and sets outcome_ from it.
  void Read();

  FramedConnection& connection_;
  bool have_ack_ = false;
  v1::HandoffAck ack_;
  absl::Status outcome_;
};

}  // namespace indexcache
