#include "services/prefill_worker/worker_flags.h"

#include "common/util/status_macros.h"
#include "services/common/worker_server_flags.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {

const char kPrefillWorkerFlagsUsage[] =
    "  --max-queued-tokens N     prompt tokens in flight before RESOURCE_EXHAUSTED (default 65536, 0: no bound)\n"
    "  --connect-timeout-ms N    handoff connection timeout (default 5000)\n"
    "  --nccl-gpu N              send NCCL handoffs from CUDA GPU N (default: NCCL handoffs refused)\n";

std::set<std::string> PrefillWorkerFlagNames() {
  std::set<std::string> names = cli::EngineFlagNames();
  names.merge(WorkerServerFlagNames());
  names.insert({"max-queued-tokens", "connect-timeout-ms", "nccl-gpu"});
  return names;
}

absl::StatusOr<PrefillWorkerOptions> PrefillWorkerOptionsFromArgs(const cli::Args& args) {
  PrefillWorkerOptions o;
  ASSIGN_OR_RETURN(o.engine, cli::EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(o.server, WorkerServerOptionsFromArgs(args));
  ASSIGN_OR_RETURN(auto max_queued, args.GetInt("max-queued-tokens"));
  ASSIGN_OR_RETURN(auto connect_ms, args.GetInt("connect-timeout-ms"));
  ASSIGN_OR_RETURN(auto nccl_gpu, args.GetInt("nccl-gpu"));
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
