// Command-line flags of a decode worker (the standalone `indexcache-decode-worker` and
// `indexcache decode-worker`): the engine flags of tools/indexcache/engine_flags.h plus the service's.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "services/decode_worker/decode_worker.h"
#include "tools/indexcache/args.h"

namespace indexcache {

// Valued flag names for cli::Args::Parse (there are no switches).
std::set<std::string> DecodeWorkerFlagNames();
absl::StatusOr<DecodeWorkerOptions> DecodeWorkerOptionsFromArgs(const cli::Args& args);

// "  --listen ADDR …" lines for usage text (the engine flags' lines are kEngineFlagsUsage).
extern const char kDecodeWorkerFlagsUsage[];

}  // namespace indexcache
