// A router, one prefill worker and one decode worker of the real `indexcache` binary, started as child
// processes on loopback — the processes `indexcache cluster up --prefill 1 --decode 1` starts, with a
// fresh cluster token for their internal plane — and a client SDK connection to the router. The
// benchmarks that drive a cluster (serving_bench, cluster_ttft_bench) share it.
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
  bool worker_metrics = false;      // serve each worker's /metrics on a free loopback port
  std::vector<std::string> decode_args;  // more flags for the decode worker
  absl::Duration start_timeout = absl::Seconds(60);     // per process, and for the pool to fill
  absl::Duration request_timeout = absl::Seconds(120);  // the client's default deadline
};

// Stopped on destruction: SIGTERM, then killed after a grace period.
class LocalCluster {
 public:
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();

  const client::Client& client() const { return *client_; }
  // host:port of the worker's /metrics (worker_metrics only; empty otherwise).
  const std::string& prefill_metrics() const { return prefill_metrics_; }
  const std::string& decode_metrics() const { return decode_metrics_; }
  // The argv of each process, for the report.
  const std::vector<std::string>& command_lines() const { return command_lines_; }

 private:
  LocalCluster() = default;
  // Starts a child and returns the address it listens on.
  absl::StatusOr<std::string> Spawn(const std::string& name, const std::vector<std::string>& argv,
                                    absl::Duration timeout);

  std::unique_ptr<cli::RunDirectory> run_directory_;  // the cluster token's file; outlives the children
  std::vector<std::unique_ptr<cli::ChildProcess>> children_;
  std::vector<std::string> command_lines_;
  std::optional<client::Client> client_;
  std::string prefill_metrics_, decode_metrics_;
};

}  // namespace indexcache::bench
