// The PrefillWorker gRPC service (proto/indexcache/v1/internal.proto): admits Prefill calls under a
// bound on queued prompt tokens (RESOURCE_EXHAUSTED past it; the router, which reads the bound from
// Load, queues the request until there is room), runs each as a PrefillJob on the RPC's thread, aborts them on
// request, and reports load. A watchdog thread turns a caller's cancel or a passed deadline into a
// stop of the job, which also unblocks a handoff waiting on a slow peer.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "common/engine/engine_loop.h"
#include "common/model/indexcache_stats.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "services/common/worker_metrics.h"
#include "services/common/worker_server.h"
#include "services/prefill_worker/prefill_job.h"

namespace indexcache {

struct PrefillServiceOptions {
  // Prompt tokens of the admitted, unfinished Prefill calls may not exceed this (0: no bound); a
  // prompt longer than the bound is still admitted when nothing else is queued.
  int64_t max_queued_prompt_tokens = 0;
  PrefillJobOptions job;
  // Every call (Prefill, Abort, GetLoad) must carry it (common/auth/grpc_token.h); none: not checked.
  // What makes a prefill worker send KV only where the router said: only the router calls Prefill.
  ClusterToken cluster_token;
};

class PrefillService final : public ::indexcache::v1::PrefillWorker::Service, public DrainableService {
 public:
  // `metrics` receives the handoffs' bytes, latencies and failures, and what every Load reads.
  PrefillService(EngineLoop& loop, const PrefillServiceOptions& options, WorkerMetrics& metrics);
  // Stops the watchdog. Every Prefill call must have returned (the server is shut down).
  ~PrefillService() override;

  // Streams the first token as soon as the prompt's last chunk sampled it (from a thread of the call's
  // own, while the call's thread sends the handoff's last rows), then `done` after the decode
  // worker's ack.
  grpc::Status Prefill(grpc::ServerContext* context, const ::indexcache::v1::PrefillRequest* request,
                       grpc::ServerWriter<::indexcache::v1::PrefillResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const ::indexcache::v1::WorkerAbortRequest* request,
                     ::indexcache::v1::WorkerAbortResponse* response) override;
  grpc::Status GetLoad(grpc::ServerContext* context, const ::indexcache::v1::LoadRequest* request,
                       ::indexcache::v1::WorkerLoad* response) override;

  // The worker id named in WorkerLoad, known once the server is bound. The address is not needed:
  // handoffs go to the decode worker's endpoints.
  void Ready(const std::string& worker_id, const std::string& address) override;
  // What GetLoad answers (also sent with heartbeats, and read for every metrics scrape, which then
  // shows the engine's counters up to now). IndexCache counters accumulate since start.
  ::indexcache::v1::WorkerLoad Load() override;
  void ReportCachedBlocks(const ::indexcache::v1::CachedBlocksCursor& since,
                          ::indexcache::v1::WorkerLoad* load) override;
  void OnCachedBlocksChanged(std::function<void()> changed) override {
    loop_.OnCachedBlocksChanged(std::move(changed));
  }
  // From now on Prefill answers UNAVAILABLE; calls in flight go on.
  void StartDraining() override;
  // Blocks until no Prefill call is in flight or `deadline` passed; whether none is.
  bool WaitIdle(absl::Time deadline) override;
  // Stops every call in flight with `why`.
  void StopAll(const absl::Status& why) override;

 private:
  struct InFlight {
    InFlight(grpc::ServerContext* context, int64_t prompt_tokens, double prefill_flops, absl::Time deadline)
        : context(context), prompt_tokens(prompt_tokens), prefill_flops(prefill_flops), control(deadline) {}
    grpc::ServerContext* context;
    int64_t prompt_tokens;
    double prefill_flops;  // its modelled work (common/model/prefill_cost.h)
    JobControl control;
  };

  // Admission under the queue bound; UNAVAILABLE while draining, ALREADY_EXISTS for a duplicate id.
  absl::StatusOr<std::shared_ptr<InFlight>> Admit(grpc::ServerContext* context,
                                                  const ::indexcache::v1::PrefillRequest& request);
  void Finish(const std::string& request_id, bool handoff_rejected);
  void Watch();

  EngineLoop& loop_;
  const PrefillServiceOptions options_;
  WorkerMetrics& metrics_;

  std::mutex mu_;
  std::string worker_id_;             // guarded by mu_
  std::condition_variable idle_;     // signalled when a call leaves `in_flight_`
  std::condition_variable watch_;    // wakes the watchdog early on shutdown
  absl::flat_hash_map<std::string, std::shared_ptr<InFlight>> in_flight_;  // guarded by mu_
  int64_t queued_prompt_tokens_ = 0;  // guarded by mu_
  double queued_prefill_flops_ = 0;   // guarded by mu_
  bool draining_ = false;             // guarded by mu_
  bool stopping_ = false;             // guarded by mu_
  uint64_t handoffs_rejected_ = 0;    // guarded by mu_
  IndexCacheStats stats_;             // guarded by mu_
  std::thread watchdog_;
};

}  // namespace indexcache
