// The prefill worker: an Engine on its own EngineLoop behind a gRPC server that serves the
// PrefillWorker service and grpc.health.v1 (SERVING once started, NOT_SERVING while draining), and,
// when a router is named, registers with it and heartbeats its load; with a metrics address it serves
// Prometheus metrics at GET /metrics. Lifecycle: Create (loads the
// model) → Start (binds, serves, registers) → Drain on SIGTERM (the caller wires signals) → Wait.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace indexcache {

class EngineLoop;
class NcclHandoffClient;
class MetricsServer;
class PrefillService;
class RouterRegistration;
class WorkerMetrics;

struct PrefillWorkerOptions {
  EngineOptions engine;  // engine.max_batch_tokens is the prefill chunk: rows ship chunk by chunk
  std::string listen_address = "127.0.0.1:0";  // port 0: the system picks a free port
  // The address the router is told (and address() returns); empty: the bound address, with a
  // wildcard host (0.0.0.0, [::]) replaced by 127.0.0.1.
  std::string advertise_address;
  std::string worker_id;       // empty: "prefill@<address>"
  std::string router_address;  // empty: no registration
  absl::Duration heartbeat_interval = absl::Seconds(1);  // until the router names its own
  // Backpressure: Prefill answers RESOURCE_EXHAUSTED when the prompt tokens in flight would pass this
  // (0: no bound).
  int64_t max_queued_prompt_tokens = 65536;
  absl::Duration handoff_connect_timeout = absl::Seconds(5);
  // The NCCL handoff: this worker's GPU (a CUDA ordinal; -1: requests asking for NCCL are refused).
  int nccl_gpu = -1;
  std::string metrics_listen_address;  // "host:port" of GET /metrics; empty: not served
};

class PrefillWorker {
 public:
  // Loads the model; serves nothing yet.
  static absl::StatusOr<std::unique_ptr<PrefillWorker>> Create(const PrefillWorkerOptions& options);
  // Stops at once if not drained: calls in flight are aborted (their KV freed, their handoffs cancelled).
  ~PrefillWorker();
  PrefillWorker(const PrefillWorker&) = delete;
  PrefillWorker& operator=(const PrefillWorker&) = delete;

  // Binds and serves; returns the advertised "host:port". Once only.
  absl::StatusOr<std::string> Start();
  // Graceful stop: health NOT_SERVING, new Prefill calls get UNAVAILABLE, calls in flight finish, then
  // the server stops. Blocks until stopped; idempotent; callable from any thread but an RPC handler.
  void Drain();
  // Blocks until the server has stopped (after Drain, or at once if never started).
  void Wait();

  const std::string& address() const { return address_; }
  const std::string& worker_id() const { return worker_id_; }
  // Where /metrics is served ("host:port"); empty when off or before Start.
  std::string metrics_address() const;

 private:
  explicit PrefillWorker(const PrefillWorkerOptions& options);
  // Shuts the server down (in-flight calls cancelled after `grace`) and stops registration.
  void Stop(absl::Duration grace);

  const PrefillWorkerOptions options_;
  std::string address_;
  std::string worker_id_;
  // Destroyed in reverse: the metrics endpoint (it reads the service), registration, server, service,
  // metrics, then the NCCL communicators and the engine loop they all use.
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<NcclHandoffClient> nccl_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<PrefillService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<RouterRegistration> registration_;
  std::unique_ptr<MetricsServer> metrics_server_;

  std::mutex mu_;        // serializes Start, Drain and Stop
  bool started_ = false; // guarded by mu_
  bool stopped_ = false; // guarded by mu_
};

}  // namespace indexcache
