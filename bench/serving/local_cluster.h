// A router with its prefill and decode workers (one of each unless asked for more) of the real
// `indexcache` binary, started as child processes on loopback — the processes `indexcache cluster up
// --prefill P --decode D` starts, with a fresh cluster token for their internal plane — and a client SDK
// connection to the router. The benchmarks that drive a cluster (serving_bench, cluster_ttft_bench,
// agentic_bench) share it.
//
//   LocalClusterOptions o;
//   o.binary = "build/tools/indexcache";  o.model = "models/glm-dsa-trained";  o.transport = "tcp";
//   ASSIGN_OR_RETURN(auto cluster, LocalCluster::Start(o));
//   TimedStream t = TimeStream(cluster->client(), request);   // timed_stream.h
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "indexcache/client.h"
#include "tools/indexcache/child_process.h"
#include "tools/indexcache/run_directory.h"

namespace indexcache::bench {

struct LocalClusterOptions {
  std::string binary;               // the `indexcache` CLI
  std::string model;                // model directory
  std::string transport = "grpc";   // grpc | tcp
  std::string device;               // empty: the workers' default (cpu)
  int threads = 1;                  // engine threads per worker
  int kv_cache_mb = 256;            // per worker
  int max_batch_tokens = 0;         // > 0: the workers' prefill chunk; 0: their default
  int prefill_workers = 1;
  int decode_workers = 1;
  bool serve_metrics = false;       // serve the router's and each worker's /metrics on a free loopback port
  std::vector<std::string> worker_args;  // more flags for every worker (e.g. --prefix-cache=false)
  std::vector<std::string> decode_args;  // more flags for the decode workers
  absl::Duration start_timeout = absl::Seconds(60);     // per process, and for the pool to fill
  absl::Duration request_timeout = absl::Seconds(120);  // the client's default deadline
};

// One worker the cluster started.
struct LocalWorker {
  std::string id;       // its --worker-id, as FinalInfo names it: "prefill0", "decode1", ...
  std::string role;     // "prefill" | "decode"
  std::string metrics;  // host:port of its /metrics (serve_metrics only; empty otherwise)
};

// Stopped on destruction: SIGTERM, then killed after a grace period.
class LocalCluster {
 public:
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();

  const client::Client& client() const { return *client_; }
  // Prefill workers first, in the order of their ids.
  const std::vector<LocalWorker>& workers() const { return workers_; }
  // host:port of the first prefill / decode worker's /metrics (serve_metrics only; empty otherwise): what
  // the benchmarks of one worker per role read.
  const std::string& prefill_metrics() const { return FirstOfRole("prefill").metrics; }
  const std::string& decode_metrics() const { return FirstOfRole("decode").metrics; }
  // host:port of the router's /metrics (serve_metrics only; empty otherwise).
  const std::string& router_metrics() const { return router_metrics_; }
  // The argv of each process, for the report.
  const std::vector<std::string>& command_lines() const { return command_lines_; }

 private:
  LocalCluster() = default;
  // Start() leaves at least one worker of each role.
  const LocalWorker& FirstOfRole(const std::string& role) const;
  // Starts a child and returns the address it listens on.
  absl::StatusOr<std::string> Spawn(const std::string& name, const std::vector<std::string>& argv,
                                    absl::Duration timeout);

  std::unique_ptr<cli::RunDirectory> run_directory_;  // the cluster token's file; outlives the children
  std::vector<std::unique_ptr<cli::ChildProcess>> children_;
  std::vector<std::string> command_lines_;
  std::optional<client::Client> client_;
  std::vector<LocalWorker> workers_;
  std::string router_metrics_;
};

}  // namespace indexcache::bench
