// The command line both workers share (`indexcache prefill-worker|decode-worker` and the standalone
// binaries): parse the flags, block the stop signals before any thread starts, create and start the
// worker, print "listening ADDR" (the line `cluster up` waits for) and any extra address lines, then
// drain on SIGINT/SIGTERM and exit 0. With a metrics endpoint, "metrics ADDR" comes just before
// "listening", so that `cluster up` reads both before it stops reading the child's stdout.
#pragma once

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/util/build_info.h"
#include "common/util/stop_signals.h"
#include "services/common/worker_server_flags.h"
#include "tools/indexcache/args.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {

template <typename Worker, typename Options>
int RunWorkerCommand(const char* program, const std::vector<std::string>& argv, const std::set<std::string>& flag_names,
                     const char* flags_usage, absl::StatusOr<Options> (*options_from_args)(const cli::Args&),
                     std::string (*extra_lines)(const Worker&) = nullptr) {
  const auto fail = [program](const absl::Status& status) {
    std::fprintf(stderr, "%s: %s\n", program, std::string(status.message()).c_str());
    return 1;
  };
  if (!argv.empty() && (argv[0] == "--help" || argv[0] == "-h")) {
    std::printf("usage: %s --model DIR [flags]\n%s%s%s", program, cli::kEngineFlagsUsage, kWorkerServerFlagsUsage,
                flags_usage);
    return 0;
  }
  if (!argv.empty() && argv[0] == "--version") {
    std::printf("%s\n", VersionLine(program).c_str());
    return 0;
  }
  absl::StatusOr<cli::Args> args = cli::Args::Parse(argv, flag_names, {"insecure-internal-plane"});
  if (!args.ok()) return fail(args.status());
  absl::StatusOr<Options> options = options_from_args(*args);
  if (!options.ok()) return fail(options.status());

  // Before any thread starts: they inherit the blocked mask; one thread waits for the signals.
  const sigset_t stop_signals = BlockStopSignals();
  absl::StatusOr<std::unique_ptr<Worker>> worker = Worker::Create(*options);
  if (!worker.ok()) return fail(worker.status());
  absl::StatusOr<std::string> address = (*worker)->Start();
  if (!address.ok()) return fail(address.status());
  if (const std::string metrics = (*worker)->metrics_address(); !metrics.empty()) {
    std::printf("metrics %s\n", metrics.c_str());
  }
  std::printf("listening %s\n", address->c_str());
  if (extra_lines != nullptr) std::fputs(extra_lines(**worker).c_str(), stdout);
  std::fflush(stdout);

  std::thread drainer([&] {
    WaitForStopSignal(stop_signals);
    (*worker)->Drain();
  });
  (*worker)->Wait();
  drainer.join();
  return 0;
}

}  // namespace indexcache
