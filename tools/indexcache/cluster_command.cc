// `indexcache cluster up`: a router and N prefill + M decode workers on loopback, each a child process
// running this same binary's service subcommand. Prints every service's address (the router's
// internal one, where workers register, as `internal ADDR`), then
// `ready <router address>` once the router's pool holds every worker (with --metrics-port-base, a
// `metrics NAME ADDR` line per service first; with --http-port, `http ADDR` after the router's line,
// the OpenAI-compatible API's address); SIGINT/SIGTERM drain and stop
// all of them (workers first, then the router). Supervision: a worker that dies is started again
// after a backoff that doubles with each death in a row (1 s up to 30 s; a run of a minute resets
// it), and after kMaxRestarts deaths in a row, or when the router dies (the workers know only its
// address), `cluster up` stops everything and exits with an error. Children die with it
// (child_process.h), so a `kill -9` leaves no orphan serving.
//
// The internal plane is authenticated out of the box: a fresh cluster token (ClusterToken::
// GenerateSecret) is written to a 0600 file in a 0700 run directory of its own (run_directory.h),
// removed on exit; every child gets --cluster-token-file, the workers register at the router's
// internal address, and `token FILE` is printed first, for tools that call workers directly.
// With --tls-cert-file and --tls-key-file the router serves its public APIs over TLS, and the readiness
// check connects over TLS too.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/auth/secrets.h"
#include "common/auth/cluster_token.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"
#include "common/util/stop_signals.h"
#include "indexcache/client.h"
#include "tools/indexcache/child_process.h"
#include "tools/indexcache/args.h"
#include "tools/indexcache/commands.h"
#include "tools/indexcache/run_directory.h"

namespace indexcache::cli {
namespace {

constexpr char kClusterUsage[] =
    "usage: indexcache cluster up --model DIR [--prefill N] [--decode M] [--port P]\n"
    "       [--index-pattern P | --index-freq N] [--transport grpc|tcp|nccl] [--threads T] [--kv-cache-mb MB]\n"
    "       [--max-batch-tokens N] [--device cpu] [--prefill-gpu G] [--decode-gpu G] [--metrics-port-base P]\n"
    "       [--prefix-cache=true|false] [--reuse-telemetry-rate R] [--length-patterns N:P,...]\n"
    "  --transport nccl moves the KV rows GPU to GPU: prefill workers on CUDA GPU --prefill-gpu (default 0),\n"
    "  decode workers on --decode-gpu (default 1).\n"
    "  --metrics-port-base P     serve /metrics: the router on port P, the workers on P+1, P+2, … (prefill\n"
    "                            workers first); P = 0 gives each service a free port\n"
    "  --http-port P             the router serves the OpenAI-compatible HTTP API on 127.0.0.1:P (0: a free\n"
    "                            port; printed as `http ADDR`)\n"
    "  --api-key-file FILE       the router's gRPC and HTTP APIs require that key (`authorization: Bearer`)\n"
    "  --tls-cert-file FILE      the router serves its gRPC and HTTP APIs over TLS with this PEM certificate\n"
    "  --tls-key-file FILE       and this key; the readiness check trusts --tls-ca-file (default: the\n"
    "  --tls-ca-file FILE        certificate itself, for a self-signed one) and expects the name localhost\n"
    "  --drain-grace S           on SIGINT/SIGTERM every worker drains at once: streams get S seconds to\n"
    "                            finish (default 30), then end UNAVAILABLE; the router follows\n";

struct ClusterSpec {
  std::string model_dir;
  int prefill = 1;
  int decode = 1;
  int port = 0;
  int metrics_port_base = -1;  // -1: no metrics endpoints
  int http_port = -1;          // -1: no HTTP API
  std::string api_key_file;
  // The router's TLS identity (PEM files; empty: plaintext), and the CAs the readiness check trusts.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;
  absl::Duration drain_grace = absl::Seconds(30);  // every service's --drain-grace
  std::string pattern;  // resolved, passed to every service
  std::string transport = "grpc";
  std::vector<std::string> worker_flags;  // engine flags every worker gets
  // Per role, for --transport nccl: {"--nccl-gpu", G}; empty otherwise.
  std::vector<std::string> prefill_flags;
  std::vector<std::string> decode_flags;
};

absl::StatusOr<ClusterSpec> SpecFromArgs(const Args& args) {
  ClusterSpec spec;
  ASSIGN_OR_RETURN(spec.model_dir, args.Require("model"));
  ASSIGN_OR_RETURN(auto prefill, args.GetInt("prefill"));
  ASSIGN_OR_RETURN(auto decode, args.GetInt("decode"));
  ASSIGN_OR_RETURN(auto port, args.GetInt("port"));
  ASSIGN_OR_RETURN(auto freq, args.GetInt("index-freq"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto metrics_port_base, args.GetInt("metrics-port-base"));
  if (prefill) spec.prefill = static_cast<int>(*prefill);
  if (decode) spec.decode = static_cast<int>(*decode);
  if (port) spec.port = static_cast<int>(*port);
  ASSIGN_OR_RETURN(auto http_port, args.GetInt("http-port"));
  if (http_port) {
    if (*http_port < 0 || *http_port > 65535) return absl::InvalidArgumentError("--http-port must be in [0, 65535]");
    spec.http_port = static_cast<int>(*http_port);
  }
  spec.api_key_file = args.Get("api-key-file").value_or("");
  spec.tls_cert_file = args.Get("tls-cert-file").value_or("");
  spec.tls_key_file = args.Get("tls-key-file").value_or("");
  if (spec.tls_cert_file.empty() != spec.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert-file and --tls-key-file go together: give both or neither");
  }
  if (args.Has("tls-ca-file") && spec.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--tls-ca-file goes with --tls-cert-file and --tls-key-file");
  }
  spec.tls_ca_file = args.Get("tls-ca-file").value_or(spec.tls_cert_file);
  ASSIGN_OR_RETURN(auto drain_grace, args.GetDouble("drain-grace"));
  if (drain_grace) {
    if (!(*drain_grace > 0)) return absl::InvalidArgumentError("--drain-grace must be > 0 seconds");
    spec.drain_grace = absl::Seconds(*drain_grace);
  }
  if (spec.prefill < 1 || spec.decode < 1) return absl::InvalidArgumentError("--prefill and --decode must be >= 1");
  if (spec.port < 0 || spec.port > 65535) return absl::InvalidArgumentError("--port must be in [0, 65535]");
  if (metrics_port_base) {
    if (*metrics_port_base < 0 || *metrics_port_base + spec.prefill + spec.decode > 65535) {
      return absl::InvalidArgumentError("--metrics-port-base leaves no room for every service's port below 65536");
    }
    spec.metrics_port_base = static_cast<int>(*metrics_port_base);
  }
  spec.transport = args.Get("transport").value_or("grpc");
  if (spec.transport != "grpc" && spec.transport != "tcp" && spec.transport != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--transport must be grpc, tcp or nccl, got '", spec.transport, "'"));
  }
  ASSIGN_OR_RETURN(auto prefill_gpu, args.GetInt("prefill-gpu"));
  ASSIGN_OR_RETURN(auto decode_gpu, args.GetInt("decode-gpu"));
  if ((prefill_gpu || decode_gpu) && spec.transport != "nccl") {
    return absl::InvalidArgumentError("--prefill-gpu and --decode-gpu go with --transport nccl");
  }
  if (spec.transport == "nccl") {
    const int64_t prefill_ordinal = prefill_gpu.value_or(0), decode_ordinal = decode_gpu.value_or(1);
    if (prefill_ordinal < 0 || decode_ordinal < 0) {
      return absl::InvalidArgumentError("--prefill-gpu and --decode-gpu are CUDA device ordinals >= 0");
    }
    spec.prefill_flags = {"--nccl-gpu", std::to_string(prefill_ordinal)};
    spec.decode_flags = {"--nccl-gpu", std::to_string(decode_ordinal)};
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(spec.model_dir));
  if (args.Has("index-pattern") && freq) return absl::InvalidArgumentError("give --index-pattern or --index-freq, not both");
  std::vector<IndexerType> types = config.indexer_types;
  if (args.Has("index-pattern")) {
    ASSIGN_OR_RETURN(types, ParseIndexPattern(*args.Get("index-pattern"), config.num_layers));
  } else if (freq) {
    ASSIGN_OR_RETURN(types, IndexPatternFromFreq(static_cast<int32_t>(*freq), config.index_skip_topk_offset,
                                                 config.num_layers));
  }
  spec.pattern = FormatIndexPattern(types);
  // Share the cores among the workers unless told otherwise.
  const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  const int worker_threads = threads ? static_cast<int>(*threads)
                                     : static_cast<int>(std::max(1L, cores / (spec.prefill + spec.decode)));
  spec.worker_flags = {"--model", spec.model_dir, "--index-pattern", spec.pattern, "--threads",
                       std::to_string(worker_threads)};
  for (const char* flag :
       {"kv-cache-mb", "max-batch-tokens", "device", "block-size", "prefix-cache", "reuse-telemetry-rate",
        "length-patterns"}) {
    if (auto v = args.Get(flag)) {
      spec.worker_flags.push_back(absl::StrCat("--", flag));
      spec.worker_flags.push_back(*v);
    }
  }
  return spec;
}

std::string SelfPath() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, n) : "indexcache";
}

// Polls the router until its pool holds every worker.
absl::Status WaitForPool(const std::string& router, const ClusterSpec& spec, absl::Duration timeout) {
  client::ClientOptions options;
  options.default_timeout = absl::Seconds(2);
  if (!spec.api_key_file.empty()) {
    ASSIGN_OR_RETURN(options.api_key, ReadSecretFile(spec.api_key_file, "API key"));
  }
  if (!spec.tls_cert_file.empty()) {
    client::TlsOptions& tls = options.tls.emplace();
    tls.ca_certificates_file = spec.tls_ca_file;
    tls.server_name = "localhost";  // the router listens on loopback
  }
  ASSIGN_OR_RETURN(client::Client client, client::Client::Connect(router, options));
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer yet";
  while (absl::Now() < deadline) {
    auto info = client.GetModelInfo();
    if (info.ok()) {
      if (info->prefill_workers >= spec.prefill && info->decode_workers >= spec.decode) return absl::OkStatus();
      last = absl::StrCat(info->prefill_workers, " prefill and ", info->decode_workers, " decode workers in the pool");
    } else {
      last = info.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("the cluster did not become ready: ", last));
}

// A worker child and what it takes to start it again.
struct Supervised {
  std::string name;
  std::vector<std::string> argv;
  std::unique_ptr<ChildProcess> process;
  absl::Time started;
  int deaths_in_a_row = 0;
  absl::Time restart_at = absl::InfiniteFuture();  // set while a restart waits out its backoff
};

constexpr int kMaxRestarts = 5;
constexpr absl::Duration kFirstBackoff = absl::Seconds(1);
constexpr absl::Duration kMaxBackoff = absl::Seconds(30);
constexpr absl::Duration kHealthyRun = absl::Minutes(1);  // a run this long forgets earlier deaths

absl::Status StartSupervised(Supervised& worker) {
  ASSIGN_OR_RETURN(worker.process, ChildProcess::Spawn(worker.name, worker.argv));
  worker.started = absl::Now();
  worker.restart_at = absl::InfiniteFuture();
  return absl::OkStatus();
}

// One round of supervision: schedules a restart for each worker that died, starts those whose
// backoff has passed. An error when the router died or a worker keeps dying.
absl::Status Supervise(ChildProcess& router, std::vector<Supervised>& workers) {
  if (router.Exited()) {
    return absl::UnavailableError(absl::StrCat("the router exited (", router.Stop(absl::ZeroDuration()),
                                               "); the workers cannot follow it to a new address"));
  }
  const absl::Time now = absl::Now();
  for (Supervised& w : workers) {
    if (w.restart_at == absl::InfiniteFuture() && w.process->Exited()) {
      const std::string how = w.process->Stop(absl::ZeroDuration());
      w.deaths_in_a_row = now - w.started >= kHealthyRun ? 1 : w.deaths_in_a_row + 1;
      if (w.deaths_in_a_row > kMaxRestarts) {
        return absl::UnavailableError(
            absl::StrCat(w.name, " died ", w.deaths_in_a_row, " times in a row (last: ", how, ")"));
      }
      const absl::Duration backoff = std::min(kFirstBackoff * (1 << (w.deaths_in_a_row - 1)), kMaxBackoff);
      std::cerr << "cluster: " << w.name << " exited (" << how << "); restarting in " << backoff << std::endl;
      w.restart_at = now + backoff;
    }
    if (w.restart_at <= now) {
      RETURN_IF_ERROR(StartSupervised(w));
      absl::StatusOr<std::string> address = w.process->WaitListening(absl::Seconds(120));
      if (address.ok()) {
        std::cout << w.name << " restarted " << *address << std::endl;
      } else {
        std::cerr << "cluster: " << w.name << " did not come back: " << address.status() << std::endl;
      }
    }
  }
  return absl::OkStatus();
}

// Beyond the drain grace, what a service may take to end its calls and exit before it is killed.
constexpr absl::Duration kExitMargin = absl::Seconds(10);

// Drains every worker at once and waits for them on one deadline — each lets its streams run for the
// drain grace, then ends the rest UNAVAILABLE, which the router passes on (no worker is left to move
// them to) — then drains the router.
void StopAll(ChildProcess& router, std::vector<Supervised>& workers, absl::Duration drain_grace) {
  for (Supervised& w : workers) w.process->Signal(SIGTERM);
  const absl::Time deadline = absl::Now() + drain_grace + kExitMargin;
  for (Supervised& w : workers) {
    const std::string how = w.process->Stop(std::max(deadline - absl::Now(), absl::ZeroDuration()));
    std::cerr << "cluster: " << w.name << " stopped: " << how << std::endl;
  }
  router.Signal(SIGTERM);
  std::cerr << "cluster: router stopped: " << router.Stop(drain_grace + kExitMargin) << std::endl;
}

// The --metrics-listen flag of the service with index `i` (router 0, then prefill, then decode workers).
std::vector<std::string> MetricsFlag(const ClusterSpec& spec, int i) {
  if (spec.metrics_port_base < 0) return {};
  return {"--metrics-listen", absl::StrCat("127.0.0.1:", spec.metrics_port_base == 0 ? 0 : spec.metrics_port_base + i)};
}

absl::Status ClusterUp(const Args& args) {
  ASSIGN_OR_RETURN(ClusterSpec spec, SpecFromArgs(args));
  // Block the stop signals before starting children, so none is lost before the wait below.
  const sigset_t stop_signals = BlockStopSignals();

  // The workers inherit it: NVLink multicast stays off for any NCCL they run (shared GPU hosts).
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
  const std::string self = SelfPath();
  ASSIGN_OR_RETURN(const std::unique_ptr<RunDirectory> run_directory, RunDirectory::Create());
  ASSIGN_OR_RETURN(const std::string secret, ClusterToken::GenerateSecret());
  ASSIGN_OR_RETURN(const std::string token_file, run_directory->WriteClusterToken(secret));
  std::cout << "token " << token_file << std::endl;
  std::vector<Supervised> workers;
  std::vector<std::string> router_argv = {self,        "router",       "--listen",        absl::StrCat("127.0.0.1:", spec.port),
                                          "--model",   spec.model_dir, "--transport",     spec.transport,
                                          "--index-pattern", spec.pattern, "--internal-listen", "127.0.0.1:0",
                                          "--cluster-token-file", token_file,
                                          "--drain-grace", absl::StrCat(absl::ToDoubleSeconds(spec.drain_grace))};
  const std::vector<std::string> router_metrics = MetricsFlag(spec, 0);
  router_argv.insert(router_argv.end(), router_metrics.begin(), router_metrics.end());
  if (spec.http_port >= 0) {
    router_argv.insert(router_argv.end(), {"--http-listen", absl::StrCat("127.0.0.1:", spec.http_port)});
  }
  if (!spec.api_key_file.empty()) router_argv.insert(router_argv.end(), {"--api-key-file", spec.api_key_file});
  if (!spec.tls_cert_file.empty()) {
    router_argv.insert(router_argv.end(), {"--tls-cert-file", spec.tls_cert_file, "--tls-key-file", spec.tls_key_file});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> router, ChildProcess::Spawn("router", router_argv));
  ASSIGN_OR_RETURN(std::string router_address, router->WaitListening(absl::Seconds(60)));
  std::cout << "router " << router_address << std::endl;
  const std::string internal_address = router->Announced("internal");
  std::cout << "internal " << internal_address << std::endl;
  if (spec.http_port >= 0) std::cout << "http " << router->Announced("http") << std::endl;
  int service_index = 1;
  auto start_workers = [&](const char* role, int count, const std::vector<std::string>& role_flags) -> absl::Status {
    for (int i = 0; i < count; ++i) {
      Supervised& w = workers.emplace_back();
      w.name = absl::StrCat(role, "-", i);
      w.argv = {self, absl::StrCat(role, "-worker"), "--listen", "127.0.0.1:0", "--router", internal_address,
                "--worker-id", w.name, "--cluster-token-file", token_file,
                "--drain-grace", absl::StrCat(absl::ToDoubleSeconds(spec.drain_grace))};
      w.argv.insert(w.argv.end(), spec.worker_flags.begin(), spec.worker_flags.end());
      w.argv.insert(w.argv.end(), role_flags.begin(), role_flags.end());
      const std::vector<std::string> metrics = MetricsFlag(spec, service_index++);
      w.argv.insert(w.argv.end(), metrics.begin(), metrics.end());
      RETURN_IF_ERROR(StartSupervised(w));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(start_workers("prefill", spec.prefill, spec.prefill_flags));
  RETURN_IF_ERROR(start_workers("decode", spec.decode, spec.decode_flags));
  for (Supervised& w : workers) {
    ASSIGN_OR_RETURN(std::string address, w.process->WaitListening(absl::Seconds(120)));
    std::cout << w.name << " " << address << std::endl;
  }
  if (spec.metrics_port_base >= 0) {
    std::cout << "metrics router " << router->Announced("metrics") << std::endl;
    for (Supervised& w : workers) std::cout << "metrics " << w.name << " " << w.process->Announced("metrics") << std::endl;
  }
  RETURN_IF_ERROR(WaitForPool(router_address, spec, absl::Seconds(60)));
  std::cout << "ready " << router_address << std::endl;

  constexpr timespec kTick = {0, 200'000'000};  // how often the children are looked at
  for (;;) {
    const int signal = sigtimedwait(&stop_signals, nullptr, &kTick);
    if (signal == SIGINT || signal == SIGTERM) {
      std::cerr << "cluster: signal " << signal << ", draining workers, then the router" << std::endl;
      StopAll(*router, workers, spec.drain_grace);
      return absl::OkStatus();
    }
    if (absl::Status supervised = Supervise(*router, workers); !supervised.ok()) {
      std::cerr << "cluster: " << supervised.message() << "; stopping the cluster" << std::endl;
      StopAll(*router, workers, spec.drain_grace);
      return supervised;
    }
  }
}

}  // namespace

int RunCluster(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] != "up") return Fail("cluster", std::string("expected `up`\n") + kClusterUsage);
  auto args = Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()),
                          {"model", "prefill", "decode", "port", "index-pattern", "index-freq", "transport", "threads",
                           "kv-cache-mb", "max-batch-tokens", "device", "block-size", "prefix-cache",
                           "reuse-telemetry-rate", "length-patterns", "prefill-gpu", "decode-gpu",
                           "metrics-port-base", "http-port",
                           "api-key-file", "drain-grace", "tls-cert-file", "tls-key-file", "tls-ca-file"},
                          {"help"});
  if (!args.ok()) return Fail("cluster", std::string(args.status().message()) + "\n" + kClusterUsage);
  if (args->Has("help")) {
    std::cout << kClusterUsage;
    return 0;
  }
  absl::Status status = ClusterUp(*args);
  if (!status.ok()) return Fail("cluster", status.ToString());
  return 0;
}

}  // namespace indexcache::cli
