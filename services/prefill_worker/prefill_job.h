// One Prefill request from submission to the decode worker's ack. The prompt runs on the shared
// EngineLoop in chunks of max_batch_tokens, submitted with a segment sink: as each engine step starts
// computing a chunk, the engine hands the job that chunk's KvSegment, which the forward pass fills
// layer by layer (latent rows of every layer, index-key rows of Full layers only, in the cache's
// dtype, copied off the compute stream). The RPC's own thread sends each slice as soon as its layer
// has landed, straight from the staging memory, so the transfer runs beside the compute and what is
// left after the last chunk is about one layer's rows; a slow peer stalls only its own request (the
// rows wait in pinned staging and the KV cache, one segment per step). On any failure the sender is
// cancelled and the request's KV blocks are freed before Run returns.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/handoff_transports.h"
#include "common/kv/kv_segment.h"
#include "indexcache/v1/internal.pb.h"

namespace indexcache {

// Why a job must end early, set from other threads (the Abort RPC; the watchdog that sees the caller
// cancel or the deadline pass). Stopping also cancels the attached sender, which unblocks a Send or
// Finish waiting on a slow or silent peer.
class JobControl {
 public:
  explicit JobControl(absl::Time deadline) : deadline_(deadline) {}

  // The first reason wins; later calls are ignored.
  void Stop(const absl::Status& why);
  // OK while the job may go on.
  absl::Status stopped() const;
  absl::Time deadline() const { return deadline_; }

  // While attached, Stop cancels `sender`. Attaching to a stopped control cancels at once.
  void Attach(HandoffSender* sender);
  // Returns whether Stop cancelled the sender; it is detached either way.
  bool Detach();

 private:
  const absl::Time deadline_;
  mutable std::mutex mu_;
  absl::Status stop_;                 // guarded by mu_
  HandoffSender* sender_ = nullptr;   // guarded by mu_
  bool cancelled_ = false;            // guarded by mu_
};

struct PrefillJobOptions {
  absl::Duration connect_timeout = absl::Seconds(5);
  // Upper bound on one KvRows payload: a segment's rows of one (layer, kind) are split to stay below
  // it (far under kMaxHandoffChunkBytes), so a long prompt still flows in pieces the peer can pipeline.
  int64_t max_chunk_bytes = int64_t{4} << 20;
  // The transports the worker can open (its NCCL client among them when it has one), used for every
  // request alike; null: HandoffTransports::Defaults() (gRPC and TCP). Outlives the job.
  const HandoffTransports* transports = nullptr;
};

class PrefillJob {
 public:
  PrefillJob(EngineLoop& loop, const PrefillJobOptions& options, JobControl& control);
  ~PrefillJob();
  PrefillJob(const PrefillJob&) = delete;
  PrefillJob& operator=(const PrefillJob&) = delete;

  // Validation errors come from Engine::SubmitPrefill (INVALID_ARGUMENT, RESOURCE_EXHAUSTED). A failed
  // handoff keeps the decode worker's or transport's message, with code DATA_LOSS (corrupt or
  // mismatching rows), UNAVAILABLE (no connection) or else ABORTED (refused). A stop returns the
  // reason given to Stop.
  absl::StatusOr<::indexcache::v1::PrefillDone> Run(const ::indexcache::v1::PrefillRequest& request,
                                                    const SamplingParams& params);
  // From another thread: blocks until the prompt's last chunk sampled the first token, and returns
  // its event (token, text, logprobs), or nullopt once Run ended without one.
  std::optional<TokenEvent> AwaitFirstToken();

  // After Run failed: the decode worker refused the handoff or the transfer broke (not a stop).
  bool handoff_rejected() const;
  // What the handoff put on the wire so far (all of it after Run; nothing before it connected).
  HandoffByteCounts bytes() const;
  // Time spent sealing and writing chunks, not waiting for the compute: bytes() / this is the rate
  // the transport reached while it had rows to send.
  absl::Duration send_time() const { return send_time_; }

 private:
  struct SinkState;

  // The options' transports, else the process's gRPC and TCP defaults.
  const HandoffTransports& Transports() const;
  // Run, up to its end (which then wakes AwaitFirstToken).
  absl::StatusOr<::indexcache::v1::PrefillDone> RunToAck(const ::indexcache::v1::PrefillRequest& request,
                                                         const SamplingParams& params);
  absl::Status Submit(const ::indexcache::v1::PrefillRequest& request, const SamplingParams& params);
  absl::StatusOr<::indexcache::v1::PrefillDone> Transfer(const ::indexcache::v1::PrefillRequest& request);
  // The next segment the engine handed over, or nullopt once the request finished and every segment
  // was taken; the stop's reason when the job is stopped meanwhile.
  absl::StatusOr<std::optional<KvSegment>> NextSegment();
  // After the finish: the first token's event (token, logprobs), or why the prefill ended without one.
  absl::StatusOr<TokenEvent> FirstToken();
  absl::Status SendSegment(const KvSegment& segment);
  // `first`: the first token, with its logprobs when the request asked for them.
  absl::Status SendTrailer(const TokenEvent& first, const std::vector<IndexerProbe>& probes);
  absl::Status Send(::indexcache::v1::HandoffChunk& chunk, std::string_view rows_data = {},
                    RowsMemory memory = RowsMemory::kHost);
  // Cancels the sender and frees the engine request (waiting for the engine to drop an unfinished one).
  void Discard();

  EngineLoop& loop_;
  const PrefillJobOptions options_;
  JobControl& control_;
  std::shared_ptr<SinkState> state_;  // shared with the request's event sink
  RequestId id_ = -1;                 // -1 until submitted
  std::string request_id_;
  uint32_t sequence_ = 0;
  absl::Duration send_time_;
  std::unique_ptr<HandoffSender> sender_;
  bool transport_failed_ = false;
};

}  // namespace indexcache
