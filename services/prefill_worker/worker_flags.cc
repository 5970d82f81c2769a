#include "services/prefill_worker/worker_flags.h"

#include "common/util/status_macros.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {

const char kPrefillWorkerFlagsUsage[] =
    "  --listen HOST:PORT        gRPC listen address (default 127.0.0.1:0, port 0 picks one)\n"
    "  --advertise HOST:PORT     address told to the router (default: the bound address)\n"
    "  --worker-id ID            (default prefill@<address>)\n"
    "  --router HOST:PORT        register with this router and send heartbeats\n"
    "  --heartbeat-ms N          heartbeat interval until the router names one (default 1000)\n"
    "  --max-queued-tokens N     prompt tokens in flight before RESOURCE_EXHAUSTED (default 65536, 0: no bound)\n"
    "  --connect-timeout-ms N    handoff connection timeout (default 5000)\n"
    "  --nccl-gpu N              send NCCL handoffs from CUDA GPU N (default: NCCL handoffs refused)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus metrics at GET /metrics there (default off)\n";

std::set<std::string> PrefillWorkerFlagNames() {
  std::set<std::string> names = cli::EngineFlagNames();
  names.insert({"listen", "advertise", "worker-id", "router", "heartbeat-ms", "max-queued-tokens",
                "connect-timeout-ms", "nccl-gpu", "metrics-listen"});
  return names;
}

absl::StatusOr<PrefillWorkerOptions> PrefillWorkerOptionsFromArgs(const cli::Args& args) {
  PrefillWorkerOptions o;
  ASSIGN_OR_RETURN(o.engine, cli::EngineOptionsFromArgs(args));
  o.listen_address = args.Get("listen").value_or(o.listen_address);
  o.advertise_address = args.Get("advertise").value_or("");
  o.worker_id = args.Get("worker-id").value_or("");
  o.router_address = args.Get("router").value_or("");
  o.metrics_listen_address = args.Get("metrics-listen").value_or("");
  ASSIGN_OR_RETURN(auto heartbeat_ms, args.GetInt("heartbeat-ms"));
  ASSIGN_OR_RETURN(auto max_queued, args.GetInt("max-queued-tokens"));
  ASSIGN_OR_RETURN(auto connect_ms, args.GetInt("connect-timeout-ms"));
  ASSIGN_OR_RETURN(auto nccl_gpu, args.GetInt("nccl-gpu"));
  if (heartbeat_ms) {
    if (*heartbeat_ms < 1) return absl::InvalidArgumentError("--heartbeat-ms must be >= 1");
    o.heartbeat_interval = absl::Milliseconds(*heartbeat_ms);
  }
  if (max_queued) {
    if (*max_queued < 0) return absl::InvalidArgumentError("--max-queued-tokens must be >= 0");
    o.max_queued_prompt_tokens = *max_queued;
  }
  if (connect_ms) {
    if (*connect_ms < 1) return absl::InvalidArgumentError("--connect-timeout-ms must be >= 1");
    o.handoff_connect_timeout = absl::Milliseconds(*connect_ms);
  }
  if (nccl_gpu) {
    if (*nccl_gpu < 0) return absl::InvalidArgumentError("--nccl-gpu must be a CUDA device ordinal >= 0");
    o.nccl_gpu = static_cast<int>(*nccl_gpu);
  }
  return o;
}

}  // namespace indexcache
