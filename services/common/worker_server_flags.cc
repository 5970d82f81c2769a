#include "services/common/worker_server_flags.h"

#include "common/util/status_macros.h"

namespace indexcache {

const char kWorkerServerFlagsUsage[] =
    "  --listen HOST:PORT        gRPC listen address (default 127.0.0.1:0, port 0 picks one)\n"
    "  --advertise HOST:PORT     address told to the router (default: the bound address)\n"
    "  --worker-id ID            (default prefill@<address> or decode@<address>)\n"
    "  --router HOST:PORT        register with this router (its internal address) and send heartbeats\n"
    "  --heartbeat-ms N          heartbeat interval until the router names one (default 1000)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus metrics at GET /metrics there (default off)\n"
    "  --drain-grace S           on SIGINT/SIGTERM, seconds to let calls in flight finish before they end\n"
    "                            UNAVAILABLE (the router moves their streams; default 30)\n"
    "  --cluster-token-file FILE the internal plane's shared secret (first line): required of every call\n"
    "                            and handoff to this worker, sent on its own (`cluster up` makes one)\n"
    "  --insecure-internal-plane serve without a cluster token: anyone reaching the ports is trusted\n";

std::set<std::string> WorkerServerFlagNames() {
  return {"listen", "advertise", "worker-id", "router", "heartbeat-ms", "metrics-listen", "drain-grace",
          "cluster-token-file"};
}

absl::StatusOr<WorkerServerOptions> WorkerServerOptionsFromArgs(const cli::Args& args) {
  WorkerServerOptions o;
  o.listen_address = args.Get("listen").value_or(o.listen_address);
  o.advertise_address = args.Get("advertise").value_or("");
  o.worker_id = args.Get("worker-id").value_or("");
  o.router_address = args.Get("router").value_or("");
  o.metrics_listen_address = args.Get("metrics-listen").value_or("");
  if (auto token_file = args.Get("cluster-token-file")) {
    ASSIGN_OR_RETURN(o.cluster_token, ClusterToken::FromFile(*token_file));
  }
  o.insecure_internal_plane = args.Has("insecure-internal-plane");
  ASSIGN_OR_RETURN(auto heartbeat_ms, args.GetInt("heartbeat-ms"));
  if (heartbeat_ms) {
    if (*heartbeat_ms < 1) return absl::InvalidArgumentError("--heartbeat-ms must be >= 1");
    o.heartbeat_interval = absl::Milliseconds(*heartbeat_ms);
  }
  ASSIGN_OR_RETURN(const std::optional<double> drain_grace, args.GetDouble("drain-grace"));
  if (drain_grace.has_value()) {
    if (!(*drain_grace >= 0)) return absl::InvalidArgumentError("--drain-grace must be >= 0 seconds");
    o.drain_grace = absl::Seconds(*drain_grace);
  }
  return o;
}

}  // namespace indexcache
