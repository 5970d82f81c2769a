// The DecodeWorker gRPC service over one EngineLoop. Decode admits a request — RESOURCE_EXHAUSTED at
// once when the KV cache is short (the router's admission queue is where requests wait) — answers
// `admitted` with the handoff endpoint of the requested transport, then streams the request's tokens
// once its handoff completes, ending with a `final` message; while the handoff arrives it reports the
// rows received so far when the router asks for it (the router's stage timeout reads them). A failed
// handoff, a client cancel or a passed deadline ends the call with that status and frees the
// request's KV blocks; Abort ends it with finish_reason ABORT.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "absl/time/time.h"
#include "common/engine/engine_loop.h"
#include "common/model/indexcache_stats.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "services/common/worker_metrics.h"
#include "services/common/worker_server.h"
#include "services/decode_worker/handoff_importer.h"

namespace indexcache {

struct DecodeServiceOptions {
  std::string tcp_handoff_address;   // empty: the TCP data plane is off
  std::string nccl_handoff_address;  // the NCCL handoff's control endpoint; empty: no NCCL handoff
  // A request whose handoff has not completed this long after admission is dropped (a backstop for
  // a prefill worker that vanished without its stream ever reaching here).
  absl::Duration handoff_timeout = absl::Minutes(10);
  // Every call (Decode, Abort, GetLoad) must carry it (common/auth/grpc_token.h); none: not checked.
  ClusterToken cluster_token;
};

class DecodeService final : public ::indexcache::v1::DecodeWorker::Service, public DrainableService {
 public:
  // Every Load updates `metrics` (KV blocks, queues, the engine's IndexCache counters).
  DecodeService(EngineLoop& loop, HandoffImporter& importer, const DecodeServiceOptions& options,
                WorkerMetrics& metrics);

  grpc::Status Decode(grpc::ServerContext* context, const ::indexcache::v1::DecodeRequest* request,
                      grpc::ServerWriter<::indexcache::v1::DecodeResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const ::indexcache::v1::WorkerAbortRequest* request,
                     ::indexcache::v1::WorkerAbortResponse* response) override;
  grpc::Status GetLoad(grpc::ServerContext* context, const ::indexcache::v1::LoadRequest* request,
                       ::indexcache::v1::WorkerLoad* response) override;

  // Starts admitting (before this, Decode answers UNAVAILABLE): the worker's id, and its gRPC address,
  // where KvHandoff is served, known once the server is bound.
  void Ready(const std::string& worker_id, const std::string& grpc_address) override;
  ::indexcache::v1::WorkerLoad Load() override;
  void ReportCachedBlocks(const ::indexcache::v1::CachedBlocksCursor& since,
                          ::indexcache::v1::WorkerLoad* load) override;
  void OnCachedBlocksChanged(std::function<void()> changed) override {
    loop_.OnCachedBlocksChanged(std::move(changed));
  }
  // New Decode calls get UNAVAILABLE from now on; calls in flight go on.
  void StartDraining() override;
  // Blocks until no Decode call is in flight or `deadline` passed; whether none is.
  bool WaitIdle(absl::Time deadline) override;
  // Ends every admitted request with `why` (their calls return it) and frees its KV.
  void StopAll(const absl::Status& why) override;

 private:
  class InFlight;  // counts a Decode call for WaitIdle

  // Reserves the prompt's KV blocks (Engine::AdmitImport); the engine request id, or why not.
  // The engine's request, and the prompt positions its prefix cache already held.
  absl::StatusOr<std::pair<RequestId, int32_t>> Admit(const ::indexcache::v1::DecodeRequest& request,
                                                      const SamplingParams& params);
  // Streams the session's events until its final message, with a `progress` message every
  // `progress_interval` (0: none) until the first event, leaving the first token out when the caller
  // has it from the prefill worker; the call's status.
  grpc::Status Stream(grpc::ServerContext* context, DecodeSession& session, absl::Time arrived,
                      absl::Duration progress_interval, bool first_token_from_prefill,
                      grpc::ServerWriter<::indexcache::v1::DecodeResponse>* writer);

  EngineLoop& loop_;
  HandoffImporter& importer_;
  const DecodeServiceOptions options_;
  WorkerMetrics& metrics_;
  const std::vector<std::pair<int32_t, std::string>> patterns_;  // the engine's (PatternSchedule::Named)
  std::string worker_id_;             // written once before ready_
  std::string grpc_handoff_address_;  // written once before ready_

  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::mutex mu_;
  std::condition_variable idle_;
  int32_t in_flight_ = 0;   // guarded by mu_
  IndexCacheStats stats_;   // guarded by mu_: the engine's counters since start
};

}  // namespace indexcache
