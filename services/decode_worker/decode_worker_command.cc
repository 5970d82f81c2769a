// `indexcache decode-worker` and the standalone indexcache-decode-worker: one decode worker process.
// Prints "listening <address>" (and "tcp-handoff <address>" when the TCP data plane is on) once it
// serves; SIGTERM or SIGINT drains it (admitted requests finish, new ones are refused) and exits 0.
#include "services/decode_worker/decode_worker_command.h"

#include <cstdio>
#include <string>
#include <thread>

#include "services/decode_worker/decode_worker.h"
#include "services/decode_worker/worker_flags.h"
#include "common/util/stop_signals.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "indexcache-decode-worker: %s\n", message.c_str());
  return 1;
}

}  // namespace

int RunDecodeWorkerCommand(const std::vector<std::string>& rest) {
  if (!rest.empty() && (rest[0] == "--help" || rest[0] == "-h")) {
    std::printf("usage: indexcache-decode-worker --model DIR [flags]\n%s%s", cli::kEngineFlagsUsage,
                kDecodeWorkerFlagsUsage);
    return 0;
  }
  auto args = cli::Args::Parse(rest, DecodeWorkerFlagNames(), {});
  if (!args.ok()) return Fail(std::string(args.status().message()));
  auto options = DecodeWorkerOptionsFromArgs(*args);
  if (!options.ok()) return Fail(std::string(options.status().message()));

  // Before any thread starts: they inherit the blocked mask; one thread waits for the signals.
  const sigset_t stop_signals = BlockStopSignals();

  auto worker = DecodeWorker::Create(*options);
  if (!worker.ok()) return Fail(std::string(worker.status().message()));
  auto address = (*worker)->Start();
  if (!address.ok()) return Fail(std::string(address.status().message()));
  std::printf("listening %s\n", address->c_str());
  if (!(*worker)->tcp_address().empty()) std::printf("tcp-handoff %s\n", (*worker)->tcp_address().c_str());
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
