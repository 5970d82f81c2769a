#include "services/decode_worker/metered_handoff_sink.h"

namespace indexcache {

absl::Status MeteredHandoffSink::OnChunk(v1::HandoffChunk& chunk, LandedRows rows) {
  const uint64_t size = chunk.ByteSizeLong() + rows.size;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, first] = streams_.try_emplace(chunk.request_id());
    if (first) it->second.started = absl::Now();
    it->second.bytes += size;
  }
  HandoffByteCounts bytes;
  CountChunkBytes(chunk, rows.view(), size, bytes);
  metrics_.AddHandoffBytes(transport_, bytes);
  const bool awaited = awaited_(chunk.request_id());
  absl::Status status = inner_.OnChunk(chunk, std::move(rows));
  if (!status.ok() && Forget(chunk.request_id(), nullptr) && awaited) metrics_.CountHandoffFailure(transport_, status);
  return status;
}

v1::HandoffAck MeteredHandoffSink::OnComplete(const std::string& request_id) {
  const bool awaited = awaited_(request_id);
  v1::HandoffAck ack = inner_.OnComplete(request_id);
  Stream stream;
  if (Forget(request_id, &stream)) {
    const absl::Status verdict = AckStatus(ack);
    if (verdict.ok()) {
      metrics_.ObserveHandoff(transport_, absl::Now() - stream.started, stream.bytes);
    } else if (awaited) {
      metrics_.CountHandoffFailure(transport_, verdict);
    }
  }
  return ack;
}

void MeteredHandoffSink::OnBroken(const std::string& request_id, const absl::Status& why) {
  const bool awaited = awaited_(request_id);
  inner_.OnBroken(request_id, why);
  // However the transport names it, a stream that broke before its end while its request waited for
  // it is the peer gone.
  if (Forget(request_id, nullptr) && awaited) {
    metrics_.CountHandoffFailure(transport_, absl::UnavailableError(why.message()));
  }
}

bool MeteredHandoffSink::Forget(const std::string& request_id, Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(request_id);
  if (it == streams_.end()) return false;
  if (stream != nullptr) *stream = it->second;
  streams_.erase(it);
  return true;
}

}  // namespace indexcache
