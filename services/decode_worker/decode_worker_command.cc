// `indexcache decode-worker` and the standalone indexcache-decode-worker: one decode worker process.
// Prints "listening <address>" (and "tcp-handoff <address>", "nccl-handoff <address>" for the data
// planes that are on) once it serves; SIGTERM or SIGINT drains it (admitted requests finish, new ones
// are refused) and exits 0.
#include "services/decode_worker/decode_worker_command.h"

#include "services/common/worker_command.h"
#include "services/decode_worker/decode_worker.h"
#include "services/decode_worker/worker_flags.h"

namespace indexcache {
namespace {

std::string HandoffLines(const DecodeWorker& worker) {
  std::string lines;
  if (!worker.tcp_address().empty()) lines += "tcp-handoff " + worker.tcp_address() + "\n";
  if (!worker.nccl_address().empty()) lines += "nccl-handoff " + worker.nccl_address() + "\n";
  return lines;
}

}  // namespace

int RunDecodeWorkerCommand(const std::vector<std::string>& argv) {
  return RunWorkerCommand<DecodeWorker, DecodeWorkerOptions>("indexcache-decode-worker", argv, DecodeWorkerFlagNames(),
                                                            kDecodeWorkerFlagsUsage, &DecodeWorkerOptionsFromArgs,
                                                            &HandoffLines);
}

}  // namespace indexcache
