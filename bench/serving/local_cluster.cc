#include "bench/serving/local_cluster.h"

#include <signal.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/auth/cluster_token.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const LocalClusterOptions& o) {
  if (o.prefill_workers < 1 || o.decode_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a cluster needs at least one worker per role, got ", o.prefill_workers, " prefill and ",
                     o.decode_workers, " decode"));
  }
  auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster());
  // Authenticated as `cluster up` runs it: a fresh token, given to every process.
  ASSIGN_OR_RETURN(cluster->run_directory_, cli::RunDirectory::Create());
  ASSIGN_OR_RETURN(const std::string secret, ClusterToken::GenerateSecret());
  ASSIGN_OR_RETURN(const std::string token_file, cluster->run_directory_->WriteClusterToken(secret));
  std::vector<std::string> router_argv = {o.binary,    "router",    "--listen",    "127.0.0.1:0",
                                          "--model",   o.model,     "--transport", o.transport,
                                          "--cluster-token-file", token_file};
  if (o.serve_metrics) router_argv.insert(router_argv.end(), {"--metrics-listen", "127.0.0.1:0"});
  ASSIGN_OR_RETURN(const std::string router_address, cluster->Spawn("router", router_argv, o.start_timeout));
  const std::string internal_address = cluster->children_.back()->Announced("internal");
  cluster->router_metrics_ = cluster->children_.back()->Announced("metrics");
  for (const auto& [role, count] : {std::pair<std::string, int>{"prefill", o.prefill_workers}, {"decode", o.decode_workers}}) {
    for (int i = 0; i < count; ++i) {
      const std::string id = absl::StrCat(role, i);
      std::vector<std::string> argv = {o.binary,  role + "-worker", "--listen",    "127.0.0.1:0",
                                       "--router", internal_address, "--worker-id", id,
                                       "--model",  o.model,         "--threads",   std::to_string(o.threads),
                                       "--kv-cache-mb", std::to_string(o.kv_cache_mb),
                                       "--cluster-token-file", token_file};
      if (!o.device.empty()) argv.insert(argv.end(), {"--device", o.device});
      if (o.max_batch_tokens > 0) argv.insert(argv.end(), {"--max-batch-tokens", std::to_string(o.max_batch_tokens)});
      if (o.serve_metrics) argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0"});
      argv.insert(argv.end(), o.worker_args.begin(), o.worker_args.end());
      if (role == "decode") argv.insert(argv.end(), o.decode_args.begin(), o.decode_args.end());
      RETURN_IF_ERROR(cluster->Spawn(id, argv, o.start_timeout).status());
      cluster->workers_.push_back({id, role, cluster->children_.back()->Announced("metrics")});
    }
  }
  client::ClientOptions options;
  options.default_timeout = o.request_timeout;
  options.connect_timeout = absl::Seconds(10);
  ASSIGN_OR_RETURN(client::Client c, client::Client::Connect(router_address, options));
  cluster->client_.emplace(c);
  const absl::Time deadline = absl::Now() + o.start_timeout;
  while (absl::Now() < deadline) {
    auto info = c.GetModelInfo();
    if (info.ok() && info->prefill_workers == o.prefill_workers && info->decode_workers == o.decode_workers) {
      return cluster;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("the router's pool never held the ", o.prefill_workers,
                                                  " prefill and ", o.decode_workers, " decode workers"));
}

const LocalWorker& LocalCluster::FirstOfRole(const std::string& role) const {
  return *std::find_if(workers_.begin(), workers_.end(), [&](const LocalWorker& w) { return w.role == role; });
}

LocalCluster::~LocalCluster() {
  client_.reset();
  for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
    (*it)->Signal(SIGTERM);
    (*it)->Stop(absl::Seconds(10));
  }
}

absl::StatusOr<std::string> LocalCluster::Spawn(const std::string& name, const std::vector<std::string>& argv,
                                                       absl::Duration timeout) {
  ASSIGN_OR_RETURN(auto child, cli::ChildProcess::Spawn(name, argv));
  children_.push_back(std::move(child));
  command_lines_.push_back(absl::StrJoin(argv, " "));
  auto address = children_.back()->WaitListening(timeout);
  if (!address.ok()) return Annotate(address.status(), "starting the " + name);
  return *address;
}

}  // namespace indexcache::bench
