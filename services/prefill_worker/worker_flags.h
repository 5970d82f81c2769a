// Command-line flags of a prefill worker (the standalone `indexcache-prefill-worker` and
// `indexcache prefill-worker`): the engine flags of tools/indexcache/engine_flags.h, the serving flags
// of services/common/worker_server_flags.h, and the prefill worker's own.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "services/prefill_worker/prefill_worker.h"
#include "tools/indexcache/args.h"

namespace indexcache {

// Valued flag names for cli::Args::Parse (there are no switches).
std::set<std::string> PrefillWorkerFlagNames();
absl::StatusOr<PrefillWorkerOptions> PrefillWorkerOptionsFromArgs(const cli::Args& args);

// The prefill worker's own lines of usage text (beside kEngineFlagsUsage and kWorkerServerFlagsUsage).
extern const char kPrefillWorkerFlagsUsage[];

}  // namespace indexcache
