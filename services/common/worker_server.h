// The serving lifecycle a prefill and a decode worker share, around the worker's own gRPC service:
// Start binds the gRPC server (the worker's services plus grpc.health.v1, SERVING once started,
// NOT_SERVING while draining), serves Prometheus metrics at GET /metrics when asked, and registers
// with the router and heartbeats the worker's load; Drain reports NOT_SERVING, tells the router at
// once, lets the calls in flight finish, then stops; destruction without a drain aborts them.
//
//   WorkerServer server(options.server);                      // the flags every worker has
//   ASSIGN_OR_RETURN(std::string address, server.Start({.role = v1::DECODE, .service = svc, ...}));
//   ...                                                       // SIGTERM
//   server.Drain();                                           // returns once stopped
//
// What differs between the workers comes in WorkerServer::Served: the services, the role's fields of
// the registration, and the listeners of its own (the decode worker's handoff data planes), which
// stop right after the gRPC server.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "indexcache/v1/internal.pb.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace indexcache {

class MetricsServer;
class RouterRegistration;

// The serving flags of every worker (--listen, --advertise, --worker-id, --router, --heartbeat-ms,
// --metrics-listen, --cluster-token-file, --insecure-internal-plane).
struct WorkerServerOptions {
  std::string listen_address = "127.0.0.1:0";  // gRPC; port 0: the system picks a free port
  // The address the router is told (and Start returns); empty: the bound address, with a wildcard
  // host (0.0.0.0, [::]) replaced by 127.0.0.1.
  std::string advertise_address;
  std::string worker_id;       // empty: "<role>@<address>"
  std::string router_address;  // empty: no registration
  absl::Duration heartbeat_interval = absl::Seconds(1);  // until the router names its own
  std::string metrics_listen_address;  // "host:port" of GET /metrics; empty: not served
  // How long Drain lets the calls in flight finish; those still running after it end UNAVAILABLE
  // (the router moves such a stream to a worker that is not draining, when one is left).
  absl::Duration drain_grace = absl::Seconds(30);
  // The internal plane's secret: every call to the worker's services and every handoff connection
  // must prove it, and the worker's own calls (registration, handoffs) carry it.
  ClusterToken cluster_token;
  // Serve with no token: only by explicit choice, with a warning (RequireClusterToken).
  bool insecure_internal_plane = false;
};

// INVALID_ARGUMENT for options no server can start with (a heartbeat interval that is not positive,
// no cluster token without insecure_internal_plane).
absl::Status ValidateWorkerServerOptions(const WorkerServerOptions& options);

// The worker's own service (PrefillWorker or DecodeWorker) as the lifecycle drives it.
class DrainableService {
 public:
  virtual ~DrainableService() = default;
  // Serving has started under `worker_id` at the advertised gRPC `address`, before health says so.
  virtual void Ready(const std::string& worker_id, const std::string& address) = 0;
  // What GetLoad answers; also what heartbeats carry and what every metrics scrape reads first, which
  // brings the engine's counters in the worker's metrics up to date. Must answer at once, never
  // waiting for the engine loop or a call in flight: liveness is not workload (a heartbeat stuck
  // behind a long prefill takes a busy, healthy worker out of the pool).
  virtual ::indexcache::v1::WorkerLoad Load() = 0;
  // Adds to `load` the prefix cache's keys a reader that follows them up to `since` needs next
  // (cached_blocks_proto.h); at once, like Load.
  virtual void ReportCachedBlocks(const ::indexcache::v1::CachedBlocksCursor& since,
                                  ::indexcache::v1::WorkerLoad* load) = 0;
  // `changed` runs whenever the prefix cache's keys changed (null: no more); it must not block.
  virtual void OnCachedBlocksChanged(std::function<void()> changed) = 0;
  // New calls get UNAVAILABLE from now on; calls in flight go on.
  virtual void StartDraining() = 0;
  // Blocks until no call is in flight or `deadline` passed; whether none is.
  virtual bool WaitIdle(absl::Time deadline) = 0;
  // Ends every call in flight with `why` and frees what it holds.
  virtual void StopAll(const absl::Status& why) = 0;
};

class WorkerServer {
 public:
  // What one worker serves. The pointers must outlive the server.
  struct Served {
    ::indexcache::v1::WorkerRole role = ::indexcache::v1::WORKER_ROLE_UNSPECIFIED;  // PREFILL or DECODE
    grpc::Service* service = nullptr;       // the worker's own service, as gRPC serves it
    DrainableService* lifecycle = nullptr;  // the same object, as the lifecycle drives it
    // Its full name ("indexcache.v1.DecodeWorker"), under which health reports it as well as "".
    std::string service_name;
    // Also served, by full name (the decode worker's KvHandoff); health reports each name too.
    std::vector<std::pair<std::string, grpc::Service*>> more_services;
    int max_receive_message_bytes = 4 << 20;
    // The role's part of the registration (model fingerprint, index pattern, TCP handoff address);
    // the worker id, role and address are filled in.
    ::indexcache::v1::RegisterRequest registration;
    std::string listening_detail;  // appended to the "listening on" log line
    // Stops the worker's own listeners, right after the gRPC server (also when Start fails).
    std::function<void()> stop_listeners;
    std::shared_ptr<prometheus::Registry> metrics;  // served at GET /metrics with a metrics address
  };

  explicit WorkerServer(WorkerServerOptions options);
  // Stops at once if started and not drained: calls in flight end with ABORTED (StopAll).
  ~WorkerServer();
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;

  // Binds and serves; returns the advertised gRPC "host:port". Once only; the worker's own listeners
  // are stopped when it fails.
  absl::StatusOr<std::string> Start(Served served);
  // Graceful stop: health NOT_SERVING, the service drains (the router hears it with the next
  // heartbeat, sent at once), the calls in flight finish — those still running after the drain
  // grace end UNAVAILABLE — then the servers stop. Blocks until stopped; idempotent; callable from
  // any thread but an RPC handler.
  void Drain();
  // Blocks until the server has stopped (after Drain, or at once if never started).
  void Wait();

  // The advertised address and the worker id; empty before Start.
  const std::string& address() const { return address_; }
  const std::string& worker_id() const { return worker_id_; }
  // Where /metrics is served ("host:port"); empty when off or before Start.
  std::string metrics_address() const;
  // What GetLoad answers; empty before Start.
  ::indexcache::v1::WorkerLoad Load();

 private:
  // Shuts the servers down (in-flight calls cancelled after `grace`) and stops registration. Locked.
  void Stop(absl::Duration grace);
  void SetServing(bool serving);

  const WorkerServerOptions options_;
  Served served_;
  std::string role_name_;  // "prefill", "decode": logs and the default worker id
  std::string address_;
  std::string worker_id_;
  // Destroyed in reverse: the metrics endpoint (it reads the service), registration, then the server.
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<RouterRegistration> registration_;
  std::unique_ptr<MetricsServer> metrics_server_;

  std::mutex mu_;         // serializes Start, Drain and Stop
  bool started_ = false;  // guarded by mu_
  bool stopped_ = false;  // guarded by mu_
};

}  // namespace indexcache
