// The server side of one handoff stream, whatever carries its bytes (the TCP data plane's
// asynchronous connections, the NCCL control channel's blocking ones): each chunk goes to the sink in
// order, with the checks every stream gets — one request per stream, nothing after the trailer, no
// end before it — until the stream ends with a verdict for the sender.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/handoff/handoff_transport.h"

namespace indexcache {

class HandoffStreamReceiver {
 public:
  explicit HandoffStreamReceiver(HandoffSink& sink) : sink_(sink) {}

  // Takes what the transport read next: a chunk (true; its rows bytes in `rows` when the sink landed
  // them, HandoffSink::LandRows), the end frame (false) or the failure that broke the stream.
  // nullopt: read on. An ack: the stream is over — the sink has seen OnComplete, OnBroken, or
  // rejected a chunk — and the ack is the verdict to send back; nothing more may be taken.
  std::optional<v1::HandoffAck> Take(const absl::StatusOr<bool>& read, v1::HandoffChunk& chunk, LandedRows rows);

 private:
  v1::HandoffAck Broken(const absl::Status& why);

  HandoffSink& sink_;
  std::string request_id_;  // named by the first chunk
  bool trailer_accepted_ = false;
};

// Reads a connection's next frame into `chunk` (cleared) and, when the sink landed them
// (HandoffSink::LandRows), its rows bytes into `rows`: true for a chunk, false at the end frame.
using ChunkReader = std::function<absl::StatusOr<bool>(v1::HandoffChunk& chunk, LandedRows& rows)>;
// A whole stream read by a blocking `read_next`, through a HandoffStreamReceiver. Returns the verdict
// to send back.
v1::HandoffAck ServeHandoffStream(HandoffSink& sink, const ChunkReader& read_next);

}  // namespace indexcache
