// `indexcache prefill-worker` and the standalone indexcache-prefill-worker: one prefill worker process.
// Prints "listening <address>" once it serves; SIGTERM or SIGINT drains it (calls in flight finish,
// new ones are refused) and it exits 0.
#include "services/prefill_worker/prefill_worker_command.h"

#include <cstdio>
#include <string>
#include <thread>

#include "services/prefill_worker/prefill_worker.h"
#include "services/prefill_worker/worker_flags.h"
#include "common/util/stop_signals.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "indexcache-prefill-worker: %s\n", message.c_str());
  return 1;
}

}  // namespace

int RunPrefillWorkerCommand(const std::vector<std::string>& rest) {
  if (!rest.empty() && (rest[0] == "--help" || rest[0] == "-h")) {
    std::printf("usage: indexcache-prefill-worker --model DIR [flags]\n%s%s", cli::kEngineFlagsUsage,
                kPrefillWorkerFlagsUsage);
    return 0;
  }
  auto args = cli::Args::Parse(rest, PrefillWorkerFlagNames(), {});
  if (!args.ok()) return Fail(std::string(args.status().message()));
  auto options = PrefillWorkerOptionsFromArgs(*args);
  if (!options.ok()) return Fail(std::string(options.status().message()));

  // Before any thread starts: they inherit the blocked mask; one thread waits for the signals.
  const sigset_t stop_signals = BlockStopSignals();

  auto worker = PrefillWorker::Create(*options);
  if (!worker.ok()) return Fail(std::string(worker.status().message()));
  auto address = (*worker)->Start();
  if (!address.ok()) return Fail(std::string(address.status().message()));
  std::printf("listening %s\n", address->c_str());
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
