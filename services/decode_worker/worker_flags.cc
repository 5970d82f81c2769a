#include "services/decode_worker/worker_flags.h"

#include "common/util/status_macros.h"
#include "services/common/worker_server_flags.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {

const char kDecodeWorkerFlagsUsage[] =
    "  --tcp-listen IP:PORT      TCP handoff data plane (default 127.0.0.1:0; 'off' disables it)\n"
    "  --tcp-advertise IP:PORT   TCP handoff address handed to prefill workers (default: the bound one)\n"
    "  --handoff-timeout-ms N    drop an admitted request whose handoff has not completed (default 600000)\n"
    "  --tcp-io-timeout-ms N     TCP data plane and NCCL handoff: longest wait on one read, write or GPU\n"
    "                            transfer (default 60000)\n"
    "  --nccl-gpu N              serve NCCL handoffs on CUDA GPU N (default: no NCCL handoff)\n"
    "  --nccl-listen IP:PORT     the NCCL handoff's control endpoint (default 127.0.0.1:0)\n"
    "  --import-area-mb N        host memory (pinned on CUDA) received rows land in until imported;\n"
    "                            a handoff waits while it is full (default 256)\n"
    "  --import-batch-mb N       import received rows in batches of N MiB while more than the eager\n"
    "                            tail is still to come (default 32; 0: each chunk as it arrives)\n"
    "  --import-eager-tail-mb N  import the prompt's last N MiB of rows chunk by chunk (default 64)\n";

std::set<std::string> DecodeWorkerFlagNames() {
  std::set<std::string> names = cli::EngineFlagNames();
  names.merge(WorkerServerFlagNames());
  names.insert({"tcp-listen", "tcp-advertise", "handoff-timeout-ms", "tcp-io-timeout-ms", "nccl-gpu", "nccl-listen",
                "import-area-mb", "import-batch-mb", "import-eager-tail-mb"});
  return names;
}

namespace {

// A positive millisecond flag, when given.
absl::Status MillisecondsFlag(const cli::Args& args, const std::string& name, absl::Duration& out) {
  ASSIGN_OR_RETURN(auto ms, args.GetInt(name));
  if (!ms) return absl::OkStatus();
  if (*ms < 1) return absl::InvalidArgumentError("--" + name + " must be >= 1");
  out = absl::Milliseconds(*ms);
  return absl::OkStatus();
}

// A size flag in MiB (>= 0), when given.
absl::Status MebibytesFlag(const cli::Args& args, const std::string& name, size_t& out) {
  ASSIGN_OR_RETURN(auto mib, args.GetInt(name));
  if (!mib) return absl::OkStatus();
  if (*mib < 0 || *mib > (int64_t{1} << 20)) return absl::InvalidArgumentError("--" + name + " must be in [0, 1048576]");
  out = static_cast<size_t>(*mib) << 20;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DecodeWorkerOptions> DecodeWorkerOptionsFromArgs(const cli::Args& args) {
  DecodeWorkerOptions o;
  ASSIGN_OR_RETURN(o.engine, cli::EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(o.server, WorkerServerOptionsFromArgs(args));
  o.tcp_listen_address = args.Get("tcp-listen").value_or(o.tcp_listen_address);
  if (o.tcp_listen_address == "off") o.tcp_listen_address.clear();
  o.tcp_advertise_address = args.Get("tcp-advertise").value_or("");
  RETURN_IF_ERROR(MillisecondsFlag(args, "handoff-timeout-ms", o.handoff_timeout));
  RETURN_IF_ERROR(MillisecondsFlag(args, "tcp-io-timeout-ms", o.tcp_io_timeout));
  RETURN_IF_ERROR(MebibytesFlag(args, "import-area-mb", o.import.receive_area_bytes));
  RETURN_IF_ERROR(MebibytesFlag(args, "import-batch-mb", o.import.batch_bytes));
  RETURN_IF_ERROR(MebibytesFlag(args, "import-eager-tail-mb", o.import.eager_tail_bytes));
  ASSIGN_OR_RETURN(auto nccl_gpu, args.GetInt("nccl-gpu"));
  if (nccl_gpu) {
    if (*nccl_gpu < 0) return absl::InvalidArgumentError("--nccl-gpu must be a CUDA device ordinal >= 0");
    o.nccl_gpu = static_cast<int>(*nccl_gpu);
  }
  o.nccl_listen_address = args.Get("nccl-listen").value_or(o.nccl_listen_address);
  return o;
}

}  // namespace indexcache
