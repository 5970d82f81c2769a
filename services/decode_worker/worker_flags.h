// Command-line flags of a decode worker (the standalone `indexcache-decode-worker` and
// `indexcache decode-worker`): the engine flags of tools/indexcache/engine_flags.h, the serving flags
// of services/common/worker_server_flags.h, and the decode worker's own.
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

// The decode worker's own lines of usage text (beside kEngineFlagsUsage and kWorkerServerFlagsUsage).
extern const char kDecodeWorkerFlagsUsage[];

}  // namespace indexcache
