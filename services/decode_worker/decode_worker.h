// The decode worker: an Engine on its own EngineLoop behind a WorkerServer (services/common) that
// serves DecodeWorker and KvHandoff (the gRPC handoff transport), registers with the router and
// drains; beside it the TCP and NCCL handoff data planes. Every transport feeds one HandoffImporter.
// Lifecycle: Create (loads the model) → Start (binds, serves, registers) → Drain on SIGTERM (the
// caller wires signals) → Wait.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/engine/engine.h"
#include "common/handoff/nccl/nccl_channel.h"
#include "indexcache/v1/internal.pb.h"
#include "services/common/worker_server.h"
#include "services/decode_worker/handoff_importer.h"

namespace indexcache {

class DecodeService;
class EngineLoop;
class KvHandoffService;
class NcclHandoffServer;
class MeteredHandoffSink;
class TcpHandoffServer;
class WorkerMetrics;

struct DecodeWorkerOptions {
  EngineOptions engine;
  WorkerServerOptions server;  // gRPC address, advertised address, worker id, router, metrics
  // The TCP handoff data plane, "ip:port" (port 0 picks); empty: no TCP data plane.
  std::string tcp_listen_address = "127.0.0.1:0";
  // The TCP data plane's "ip:port" handed to prefill workers (in `admitted` and the registration);
  // empty: the bound address. Needed behind NAT or when bound to a wildcard: prefill workers cannot
  // dial 0.0.0.0. An IP, not a name: the TCP sender does not resolve names.
  std::string tcp_advertise_address;
  // Where received rows land and how they are grouped into imports (HandoffImporter).
  ImportOptions import;
  // A request whose handoff has not completed this long after admission is dropped.
  absl::Duration handoff_timeout = absl::Minutes(10);
  // TCP data plane: bound on each read or write, the wait for the next chunk included. The NCCL
  // handoff uses it too: control I/O, joining a communicator, each GPU transfer.
  absl::Duration tcp_io_timeout = absl::Seconds(60);
  // The NCCL handoff: this worker's GPU (a CUDA ordinal; -1: no NCCL handoff) and its control endpoint.
  int nccl_gpu = -1;
  std::string nccl_listen_address = "127.0.0.1:0";
  // How the NCCL handoff's communicators are made on `nccl_gpu`: MakeNcclChannelFactory (tests pass
  // an in-process loopback).
  std::function<absl::StatusOr<std::unique_ptr<PeerChannelFactory>>(int gpu)> nccl_channels = MakeNcclChannelFactory;
  // Where received rows land; unset: NcclRowsMemory (device memory when the engine runs on `nccl_gpu`).
  std::optional<RowsMemory> nccl_rows;
};

class DecodeWorker {
 public:
  // Loads the model; serves nothing yet.
  static absl::StatusOr<std::unique_ptr<DecodeWorker>> Create(const DecodeWorkerOptions& options);
  // Stops at once if not drained: requests in flight end with ABORTED and their KV is freed.
  ~DecodeWorker();
  DecodeWorker(const DecodeWorker&) = delete;
  DecodeWorker& operator=(const DecodeWorker&) = delete;

  // Binds and serves; returns the advertised gRPC "host:port". Once only.
  absl::StatusOr<std::string> Start();
  // Graceful stop: health NOT_SERVING, new Decode calls get UNAVAILABLE, admitted requests finish
  // (their handoffs complete, their sequences generate to the end), then the servers stop. Blocks
  // until stopped; idempotent; callable from any thread but an RPC handler.
  void Drain();
  // Blocks until the server has stopped (after Drain, or at once if never started).
  void Wait();

  const std::string& address() const { return server_.address(); }
  // The TCP data plane's address as prefill workers are told it: --tcp-advertise, else the bound
  // "ip:port" (empty when off).
  const std::string& tcp_address() const { return tcp_address_; }
  // The NCCL handoff's control endpoint "ip:port" (empty when off).
  const std::string& nccl_address() const { return nccl_address_; }
  const std::string& worker_id() const { return server_.worker_id(); }
  // Where /metrics is served ("host:port"); empty when off or before Start.
  std::string metrics_address() const { return server_.metrics_address(); }
  // What GetLoad answers (the router's view of this worker); empty before Start.
  ::indexcache::v1::WorkerLoad Load() { return server_.Load(); }

 private:
  explicit DecodeWorker(const DecodeWorkerOptions& options);
  // Starts the TCP and NCCL data planes (those that are on); stopped by StopDataPlanes.
  absl::Status StartDataPlanes();
  void StopDataPlanes();

  const DecodeWorkerOptions options_;
  std::string tcp_address_;
  std::string nccl_address_;
  RowsMemory nccl_rows_ = RowsMemory::kHost;  // where NCCL lands rows
  // Destroyed in reverse: the server (it stops the data planes), the data planes, services, the
  // metered sinks, importer, metrics, then the engine loop they use.
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<HandoffImporter> importer_;
  std::unique_ptr<MeteredHandoffSink> grpc_sink_;  // the importer, as each transport feeds it
  std::unique_ptr<MeteredHandoffSink> tcp_sink_;
  std::unique_ptr<KvHandoffService> handoff_service_;
  std::unique_ptr<DecodeService> service_;
  std::unique_ptr<TcpHandoffServer> tcp_server_;
  std::unique_ptr<NcclHandoffServer> nccl_server_;
  WorkerServer server_;
};

}  // namespace indexcache
