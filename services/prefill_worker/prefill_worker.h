// The prefill worker: an Engine on its own EngineLoop behind a WorkerServer (services/common) that
// serves the PrefillWorker service, registers with the router and drains. Lifecycle: Create (loads
// the model) → Start (binds, serves, registers) → Drain on SIGTERM (the caller wires signals) → Wait.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "common/handoff/nccl/nccl_channel.h"
#include "services/common/worker_server.h"

namespace indexcache {

class EngineLoop;
class HandoffTransports;
class PrefillService;
class WorkerMetrics;

struct PrefillWorkerOptions {
  EngineOptions engine;  // engine.max_batch_tokens is the prefill chunk: rows ship chunk by chunk
  WorkerServerOptions server;  // gRPC address, advertised address, worker id, router, metrics
  // Backpressure: Prefill answers RESOURCE_EXHAUSTED when the prompt tokens in flight would pass this
  // (0: no bound).
  int64_t max_queued_prompt_tokens = 65536;
  absl::Duration handoff_connect_timeout = absl::Seconds(5);
  // The NCCL handoff: this worker's GPU (a CUDA ordinal; -1: requests asking for NCCL are refused).
  int nccl_gpu = -1;
  // How the NCCL handoff's communicators are made on `nccl_gpu`: MakeNcclChannelFactory (tests pass
  // an in-process loopback).
  std::function<absl::StatusOr<std::unique_ptr<PeerChannelFactory>>(int gpu)> nccl_channels = MakeNcclChannelFactory;
  // Where its rows lie; unset: NcclRowsMemory (device memory when the engine runs on `nccl_gpu`).
  std::optional<RowsMemory> nccl_rows;
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

  const std::string& address() const { return server_.address(); }
  const std::string& worker_id() const { return server_.worker_id(); }
  // Where /metrics is served ("host:port"); empty when off or before Start.
  std::string metrics_address() const { return server_.metrics_address(); }

 private:
  explicit PrefillWorker(const PrefillWorkerOptions& options);

  // Destroyed in reverse: the server (it aborts calls still in flight), service, metrics, then the
  // handoff transports (NCCL communicators among them) and the engine loop they all use.
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<HandoffTransports> transports_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<PrefillService> service_;
  WorkerServer server_;
};

}  // namespace indexcache
