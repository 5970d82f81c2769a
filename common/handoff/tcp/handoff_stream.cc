#include "common/handoff/tcp/handoff_stream.h"

#include "absl/strings/str_format.h"
#include "common/util/logging.h"

namespace indexcache {

v1::HandoffAck HandoffStreamReceiver::Broken(const absl::Status& why) {
  sink_.OnBroken(request_id_, why);
  return MakeAck(why);
}

std::optional<v1::HandoffAck> HandoffStreamReceiver::Take(const absl::StatusOr<bool>& read, v1::HandoffChunk& chunk,
                                                          LandedRows rows) {
  if (!read.ok()) return Broken(read.status());
  if (!*read) {
    if (!trailer_accepted_) {
      return Broken(absl::AbortedError(
          absl::StrFormat("the handoff stream of request '%s' ended before its trailer", request_id_)));
    }
    return sink_.OnComplete(request_id_);
  }
  if (request_id_.empty()) request_id_ = chunk.request_id();
  if (chunk.request_id() != request_id_) {
    return Broken(absl::InvalidArgumentError(
        absl::StrFormat("a handoff connection carries one request: chunk %d names '%s' after '%s'", chunk.sequence(),
                        chunk.request_id(), request_id_)));
  }
  if (trailer_accepted_) {
    return Broken(absl::InvalidArgumentError(
        absl::StrFormat("request '%s': chunk %d arrived after the trailer", request_id_, chunk.sequence())));
  }
  if (absl::Status verdict = sink_.OnChunk(chunk, std::move(rows)); !verdict.ok()) {
    IC_LOG(Debug) << "handoff of request '" << request_id_ << "' rejected: " << verdict;
    return MakeAck(verdict);
  }
  trailer_accepted_ = chunk.has_trailer();
  return std::nullopt;
}

v1::HandoffAck ServeHandoffStream(HandoffSink& sink, const ChunkReader& read_next) {
  HandoffStreamReceiver stream(sink);
  for (;;) {
    v1::HandoffChunk chunk;
    LandedRows rows;
    const absl::StatusOr<bool> read = read_next(chunk, rows);
    if (std::optional<v1::HandoffAck> verdict = stream.Take(read, chunk, std::move(rows))) return *verdict;
  }
}

}  // namespace indexcache
