// The cluster's front end: serves the public indexcache.v1.IndexCache API (Generate, Abort, ModelInfo)
// and grpc.health.v1 on its public port (and, with `http_listen_address`, the OpenAI-compatible HTTP
// API, which calls those services in process); serves the workers' Registry on a separate internal
// port, where every call must carry the cluster token; and dispatches each request to a prefill and a
// decode worker (see generate_call.h for a request's path, worker_registry.h for the pool).
//
//   Router router(options);
//   ASSIGN_OR_RETURN(std::string address, router.Start());   // "127.0.0.1:41234"
//   router.internal_address();                                // what workers' --router names
//   ...                                                       // SIGTERM:
//   router.Drain(absl::Seconds(30));                          // refuse new requests, finish the others
//   router.Wait();
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/server_tls.h"
#include "grpcpp/server.h"
#include "indexcache/v1/internal.pb.h"
#include "services/router/dns_discovery.h"
#include "services/router/router_metrics.h"
#include "services/router/worker_registry.h"

namespace indexcache {

class AdmissionQueue;
class MetricsServer;
namespace openai {
class OpenAiServer;
}

struct RouterOptions {
  // "host:port"; port 0 lets the OS pick one (Start returns the address bound).
  std::string listen_address = "127.0.0.1:0";
  // "host:port" of the internal plane: the Registry workers register and heartbeat with. Port 0: any
  // free port (internal_address() says which).
  std::string internal_listen_address = "127.0.0.1:0";
  // The internal plane's secret: every Registry call must carry it, every call to a worker does.
  ClusterToken cluster_token;
  // Run the internal plane with no token: only by explicit choice, with a warning (RequireClusterToken).
  bool insecure_internal_plane = false;
  // The served model: config.json (vocabulary, context limit, ModelInfo), tokenizer.json when present
  // (text prompts), and the weights when present (the model fingerprint workers must match; without
  // them the pool takes its fingerprint from the first worker that registers).
  std::string model_dir;
  // Static workers ("host:port" of their gRPC services), probed rather than registered.
  std::vector<std::string> prefill_workers;
  std::vector<std::string> decode_workers;
  // DNS names ("host:port") whose addresses are workers, re-resolved every `dns_interval`: a
  // Kubernetes headless Service per role (dns_discovery.h).
  std::vector<std::string> prefill_dns;
  std::vector<std::string> decode_dns;
  absl::Duration dns_interval = absl::Seconds(5);
  v1::HandoffTransport transport = v1::HANDOFF_TRANSPORT_GRPC;
  // The IndexCache pattern ("FSSF…") every worker must run; empty: the first registered worker's.
  std::string index_pattern;
  // Requests admitted and waiting for room on the workers (admission_queue.h) until their prefill
  // starts; more get RESOURCE_EXHAUSTED.
  int max_queued_requests = 256;
  // A registered worker silent for this long leaves the pool (workers heartbeat at a third of it).
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  // How often every worker is health-checked (static ones also report their load then).
  absl::Duration health_check_interval = absl::Seconds(1);
  // The deadline of a request whose client set none (a client's own deadline is kept when shorter).
  absl::Duration request_timeout = absl::Minutes(10);
  // Stage timeout: an attempt whose workers show no progress this long (no admission, no handoff rows
  // arriving, no token) is cancelled and failed over (stall_monitor.h). Longer than one prefill chunk
  // of one layer takes, which is what the decode worker sees arrive at a time.
  absl::Duration stall_timeout = absl::Seconds(60);
  // How many times one stream may move to other workers after tokens reached its client, when its
  // decode worker dies or stalls (or the prefill of a moved stream fails); 0: never, the stream ends
  // UNAVAILABLE (generate_call.h).
  int migration_limit = 3;
  // How much a worker's cached copy of a prompt's prefix counts against its load in placement
  // (RegistryOptions::prefix_overlap_weight); 0: load alone.
  double prefix_overlap_weight = 1.0;
  std::string metrics_listen_address;  // "host:port" of GET /metrics; empty: not served
  // "host:port" of the OpenAI-compatible HTTP API (services/openai); empty: not served.
  std::string http_listen_address;
  // The key clients of the public API, gRPC and HTTP, must send as `authorization: Bearer <key>`;
  // empty: none needed. Health and reflection stay open.
  std::string api_key;
  // TLS on the public port and the HTTP API (with a client CA: clients must show a certificate it
  // signed); unset: plaintext, with a warning when the public port is not on loopback.
  std::optional<ServerTls> tls;
  // The largest client message (RESOURCE_EXHAUSTED from gRPC past it, before any parsing): a prompt of
  // 200K token ids takes about 1 MiB.
  int max_request_bytes = 4 << 20;
};

class Router {
 public:
  explicit Router(RouterOptions options);
  ~Router();  // drains with no grace if still running
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Loads the model's config and tokenizer, probes the static workers once, and starts serving.
  // Returns the address clients reach it at ("0.0.0.0"/"[::]" become "127.0.0.1").
  absl::StatusOr<std::string> Start();
  // Stops admitting (new Generate calls get UNAVAILABLE and health turns NOT_SERVING), waits up to
  // `grace` for the requests in flight, then cancels what is left and stops the server.
  void Drain(absl::Duration grace = absl::InfiniteDuration());
  // Blocks until the router has stopped (after Drain, from any thread).
  void Wait();

  // The workers in rotation; every known worker (for tests and ModelInfo).
  std::vector<WorkerInfo> Pool() const;
  std::vector<WorkerInfo> Workers() const;
  // Runs one round of health checks now instead of waiting for the interval.
  void ProbeWorkers();
  // Requests admitted and not yet handed to a prefill worker / not yet finished.
  int queued_requests() const;
  int in_flight_requests() const;
  // Where the Registry is served ("host:port", a wildcard host as loopback); empty before Start.
  std::string internal_address() const { return internal_address_; }
  // Where /metrics is served ("host:port"); empty when off or before Start.
  std::string metrics_address() const;
  // Where the OpenAI-compatible API is served ("host:port"); empty when off or before Start.
  std::string http_address() const;

 private:
  class Services;
  void ProbeLoop();
  // Logs a warning for each public listener off loopback that serves without TLS.
  void WarnOfPlaintextOffLoopback() const;

  const RouterOptions options_;
  RouterMetrics metrics_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<AdmissionQueue> admission_;  // wakes on registry_'s capacity_changed
  std::unique_ptr<DnsDiscovery> discovery_;  // null without DNS names
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;           // public: IndexCache, health, reflection
  std::unique_ptr<grpc::Server> internal_server_;  // internal: Registry, health
  std::string internal_address_;
  std::unique_ptr<MetricsServer> metrics_server_;  // reads services_ and registry_: destroyed before them
  std::unique_ptr<openai::OpenAiServer> http_server_;  // calls server_ in process: destroyed before it
  std::thread prober_;

  std::mutex mu_;
  std::condition_variable changed_;
  bool draining_ = false;  // Drain began
  bool stopping_ = false;  // the prober exits
  bool stopped_ = false;   // Drain finished
};

}  // namespace indexcache
