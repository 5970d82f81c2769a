// A HandoffSink that counts what one transport delivers to the sink it wraps (the HandoffImporter):
// bytes by payload kind as chunks arrive (a chunk's serialized size; framing is not counted), the
// duration and bandwidth of each handoff from its first chunk to the verdict, and failures — a chunk
// refused, a stream that broke, a verdict that rejects. The decode worker puts one in front of the
// importer per transport, so the transport label is known without the transports knowing metrics.
// A handoff whose request no longer waits for it (its caller cancelled it, its deadline passed, it
// was aborted) is not a failure when it breaks or is refused: that alert must mean the transport or
// the data, not clients giving up.
#pragma once

#include <functional>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/handoff/handoff_transport.h"
#include "services/common/worker_metrics.h"

namespace indexcache {

class MeteredHandoffSink final : public HandoffSink {
 public:
  // Whether `request_id` still waits for its handoff here (asked before the wrapped sink sees a
  // failure, which may end the request).
  using Awaited = std::function<bool(const std::string& request_id)>;

  MeteredHandoffSink(HandoffSink& inner, WorkerMetrics& metrics, v1::HandoffTransport transport, Awaited awaited)
      : inner_(inner), metrics_(metrics), transport_(transport), awaited_(std::move(awaited)) {}

  absl::StatusOr<LandedRows> LandRows(const v1::HandoffChunk& chunk, size_t bytes, RowsMemory memory) override {
    return inner_.LandRows(chunk, bytes, memory);
  }
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows rows) override;
  v1::HandoffAck OnComplete(const std::string& request_id) override;
  void OnBroken(const std::string& request_id, const absl::Status& why) override;

 private:
  struct Stream {
    absl::Time started;
    uint64_t bytes = 0;
  };
  // Forgets `request_id`'s stream; false when none was seen (a stray connection, not a handoff).
  bool Forget(const std::string& request_id, Stream* stream);

  HandoffSink& inner_;
  WorkerMetrics& metrics_;
  const v1::HandoffTransport transport_;
  const Awaited awaited_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, Stream> streams_;  // guarded by mu_: handoffs in progress
};

}  // namespace indexcache
