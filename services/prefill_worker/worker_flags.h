// Command-line flags of a prefill worker (the standalone `indexcache-prefill-worker` and
// `indexcache prefill-worker`): the engine flags of tools/indexcache/engine_flags.h plus the service's.
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

// "  --listen ADDR …" lines for usage text (the engine flags' lines are kEngineFlagsUsage).
extern const char kPrefillWorkerFlagsUsage[];

}  // namespace indexcache
