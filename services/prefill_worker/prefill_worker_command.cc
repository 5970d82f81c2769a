// `indexcache prefill-worker` and the standalone indexcache-prefill-worker: one prefill worker process.
// Prints "listening <address>" once it serves; SIGTERM or SIGINT drains it (calls in flight finish,
// new ones are refused) and it exits 0.
#include "services/prefill_worker/prefill_worker_command.h"

#include "services/common/worker_command.h"
#include "services/prefill_worker/prefill_worker.h"
#include "services/prefill_worker/worker_flags.h"

namespace indexcache {

int RunPrefillWorkerCommand(const std::vector<std::string>& argv) {
  return RunWorkerCommand<PrefillWorker, PrefillWorkerOptions>("indexcache-prefill-worker", argv,
                                                              PrefillWorkerFlagNames(), kPrefillWorkerFlagsUsage,
                                                              &PrefillWorkerOptionsFromArgs);
}

}  // namespace indexcache
