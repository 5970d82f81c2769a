// The command-line flags of WorkerServerOptions, which both workers take (the standalone binaries and
// `indexcache prefill-worker|decode-worker`); each worker adds the engine flags and its own.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "services/common/worker_server.h"
#include "tools/indexcache/args.h"

namespace indexcache {

// Valued flag names for cli::Args::Parse.
std::set<std::string> WorkerServerFlagNames();
// INVALID_ARGUMENT naming the flag for a value out of range (--heartbeat-ms below 1).
absl::StatusOr<WorkerServerOptions> WorkerServerOptionsFromArgs(const cli::Args& args);

// "  --listen HOST:PORT …" lines for usage text.
extern const char kWorkerServerFlagsUsage[];

}  // namespace indexcache
