#include "services/router/router_command.h"

#include "common/util/build_info.h"
#include "common/util/stop_signals.h"

#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/auth/secrets.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

constexpr char kUsage[] =
    "usage: indexcache-router --model DIR [flags]\n"
    "  --listen ADDR             host:port of the public API (default 127.0.0.1:0, port 0 = any free port)\n"
    "  --internal-listen ADDR    host:port of the internal plane, the workers' Registry (default\n"
    "                            127.0.0.1:0); workers' --router names it\n"
    "  --cluster-token-file FILE the internal plane's shared secret (first line): required of every\n"
    "                            Registry call, sent on every call to a worker (`cluster up` makes one)\n"
    "  --insecure-internal-plane run the internal plane without a token: anyone reaching it is trusted\n"
    "  --model DIR               the served model (config.json, tokenizer.json, weights for the fingerprint)\n"
    "  --prefill ADDR[,ADDR…]    static prefill workers (repeatable); others register themselves\n"
    "  --decode ADDR[,ADDR…]     static decode workers (repeatable)\n"
    "  --prefill-dns HOST:PORT   a DNS name whose A/AAAA addresses are prefill workers (a Kubernetes\n"
    "                            headless Service), re-resolved every --dns-interval (repeatable)\n"
    "  --decode-dns HOST:PORT    the same for decode workers\n"
    "  --dns-interval S          seconds between DNS lookups (default 5)\n"
    "  --transport grpc|tcp|nccl KV handoff transport (default grpc; nccl: workers started with --nccl-gpu)\n"
    "  --index-pattern P         IndexCache pattern every worker must run (default: the first worker's)\n"
    "  --queue-limit N           requests waiting for a prefill before RESOURCE_EXHAUSTED (default 256)\n"
    "  --heartbeat-timeout S     seconds without heartbeat before a worker leaves the pool (default 5)\n"
    "  --health-interval S       seconds between health checks (default 1)\n"
    "  --request-timeout S       deadline of requests that set none (default 600)\n"
    "  --stall-timeout S         an attempt whose workers make no progress this long (no handoff rows,\n"
    "                            no token) is failed over to another pair (default 60)\n"
    "  --migration-limit N       times a stream may move to another pair after its decode worker died or\n"
    "                            stalled mid-stream (prompt + tokens so far re-prefilled; default 3, 0: off)\n"
    "  --prefix-overlap-weight W how much a worker's cached copy of a prompt's prefix counts against its\n"
    "                            load when placing the prompt: 1 weighs the work it saves like queued work\n"
    "                            (default), more favours cache hits, 0 places by load alone\n"
    "  --drain-grace S           on SIGINT/SIGTERM, seconds to let requests finish (default 30)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus metrics at GET /metrics there (default off)\n"
    "  --http-listen HOST:PORT   serve the OpenAI-compatible HTTP API there (/v1/completions,\n"
    "                            /v1/chat/completions, /v1/models, /health; default off; port 0 = any)\n"
    "  --api-key-file FILE       clients of the gRPC and HTTP APIs must send `authorization: Bearer <the\n"
    "                            file's first line>`\n"
    "  --tls-cert-file FILE      serve the gRPC and HTTP APIs over TLS with this PEM certificate chain\n"
    "                            (the server's certificate first)\n"
    "  --tls-key-file FILE       the certificate's PEM private key (with --tls-cert-file)\n"
    "  --tls-client-ca-file FILE require of every client a certificate signed by these PEM CAs (mutual TLS)\n"
    "  --version                 print the version, commit and backends, then exit\n";

absl::StatusOr<absl::Duration> SecondsFlag(const cli::Args& args, const std::string& name, absl::Duration fallback) {
  ASSIGN_OR_RETURN(const std::optional<double> seconds, args.GetDouble(name));
  if (!seconds.has_value()) return fallback;
  if (!(*seconds > 0)) return absl::InvalidArgumentError(absl::StrCat("--", name, " must be > 0 seconds"));
  return absl::Seconds(*seconds);
}

std::vector<std::string> Addresses(const cli::Args& args, const std::string& name) {
  std::vector<std::string> addresses;
  for (const std::string& value : args.GetAll(name)) {
    for (absl::string_view address : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      addresses.emplace_back(address);
    }
  }
  return addresses;
}

// The public API's TLS identity from --tls-cert-file, --tls-key-file and --tls-client-ca-file; none
// without them. The first two come together, the third only with them.
absl::StatusOr<std::optional<ServerTls>> TlsFromArgs(const cli::Args& args) {
  const std::optional<std::string> certificate = args.Get("tls-cert-file");
  const std::optional<std::string> key = args.Get("tls-key-file");
  const std::optional<std::string> client_ca = args.Get("tls-client-ca-file");
  if (certificate.has_value() != key.has_value()) {
    return absl::InvalidArgumentError("--tls-cert-file and --tls-key-file go together: give both or neither");
  }
  if (!certificate.has_value()) {
    if (client_ca.has_value()) {
      return absl::InvalidArgumentError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file");
    }
    return std::nullopt;
  }
  return ServerTls::FromFiles(*certificate, *key, client_ca.value_or(""));
}

}  // namespace

absl::StatusOr<RouterOptions> RouterOptionsFromArgs(const cli::Args& args) {
  RouterOptions o;
  ASSIGN_OR_RETURN(o.model_dir, args.Require("model"));
  if (auto listen = args.Get("listen")) o.listen_address = *listen;
  if (auto internal = args.Get("internal-listen")) o.internal_listen_address = *internal;
  if (auto token_file = args.Get("cluster-token-file")) {
    ASSIGN_OR_RETURN(o.cluster_token, ClusterToken::FromFile(*token_file));
  }
  o.insecure_internal_plane = args.Has("insecure-internal-plane");
  o.prefill_workers = Addresses(args, "prefill");
  o.decode_workers = Addresses(args, "decode");
  o.prefill_dns = Addresses(args, "prefill-dns");
  o.decode_dns = Addresses(args, "decode-dns");
  const std::string transport = args.Get("transport").value_or("grpc");
  if (transport == "grpc") {
    o.transport = v1::HANDOFF_TRANSPORT_GRPC;
  } else if (transport == "tcp") {
    o.transport = v1::HANDOFF_TRANSPORT_TCP;
  } else if (transport == "nccl") {
    o.transport = v1::HANDOFF_TRANSPORT_NCCL;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--transport must be grpc, tcp or nccl, got '", transport, "'"));
  }
  o.index_pattern = args.Get("index-pattern").value_or("");
  o.metrics_listen_address = args.Get("metrics-listen").value_or("");
  o.http_listen_address = args.Get("http-listen").value_or("");
  if (auto key_file = args.Get("api-key-file")) {
    ASSIGN_OR_RETURN(o.api_key, ReadSecretFile(*key_file, "API key"));
  }
  ASSIGN_OR_RETURN(o.tls, TlsFromArgs(args));
  ASSIGN_OR_RETURN(const std::optional<int64_t> queue_limit, args.GetInt("queue-limit"));
  if (queue_limit.has_value()) o.max_queued_requests = static_cast<int>(*queue_limit);
  ASSIGN_OR_RETURN(o.heartbeat_timeout, SecondsFlag(args, "heartbeat-timeout", o.heartbeat_timeout));
  ASSIGN_OR_RETURN(o.health_check_interval, SecondsFlag(args, "health-interval", o.health_check_interval));
  ASSIGN_OR_RETURN(o.request_timeout, SecondsFlag(args, "request-timeout", o.request_timeout));
  ASSIGN_OR_RETURN(o.dns_interval, SecondsFlag(args, "dns-interval", o.dns_interval));
  ASSIGN_OR_RETURN(o.stall_timeout, SecondsFlag(args, "stall-timeout", o.stall_timeout));
  ASSIGN_OR_RETURN(const std::optional<int64_t> migration_limit, args.GetInt("migration-limit"));
  if (migration_limit.has_value()) {
    if (*migration_limit < 0 || *migration_limit > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("--migration-limit must be in [0, 100], got ", *migration_limit));
    }
    o.migration_limit = static_cast<int>(*migration_limit);
  }
  ASSIGN_OR_RETURN(const std::optional<double> overlap_weight, args.GetDouble("prefix-overlap-weight"));
  if (overlap_weight.has_value()) {
    if (!(*overlap_weight >= 0 && *overlap_weight <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prefix-overlap-weight must be in [0, 100], got ", *overlap_weight));
    }
    o.prefix_overlap_weight = *overlap_weight;
  }
  return o;
}

int RunRouterCommand(const std::vector<std::string>& argv) {
  const std::set<std::string> valued = {"listen",          "model",           "prefill",       "decode",
                                        "prefill-dns",     "decode-dns",      "dns-interval",  "transport",
                                        "index-pattern",   "queue-limit",     "heartbeat-timeout",
                                        "health-interval", "request-timeout", "drain-grace",   "metrics-listen",
                                        "http-listen",     "api-key-file",    "stall-timeout", "migration-limit",
                                        "prefix-overlap-weight",
                                        "internal-listen", "cluster-token-file", "tls-cert-file",
                                        "tls-key-file",    "tls-client-ca-file"};
  absl::StatusOr<cli::Args> args = cli::Args::Parse(argv, valued, {"help", "version", "insecure-internal-plane"});
  if (args.ok() && args->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args.ok() && args->Has("version")) {
    std::printf("%s\n", VersionLine("indexcache-router").c_str());
    return 0;
  }
  absl::StatusOr<RouterOptions> options = args.ok() ? RouterOptionsFromArgs(*args) : args.status();
  absl::StatusOr<absl::Duration> grace =
      args.ok() ? SecondsFlag(*args, "drain-grace", absl::Seconds(30)) : args.status();
  if (!options.ok() || !grace.ok()) {
    std::fprintf(stderr, "indexcache router: %s\n%s",
                 std::string((options.ok() ? grace.status() : options.status()).message()).c_str(), kUsage);
    return 2;
  }
  // Signals are taken by sigwait below; blocked before gRPC starts its threads, which inherit the mask.
  const sigset_t signals = BlockStopSignals();

  Router router(*options);
  absl::StatusOr<std::string> address = router.Start();
  if (!address.ok()) {
    std::fprintf(stderr, "indexcache router: %s\n", std::string(address.status().message()).c_str());
    return 1;
  }
  // Before "listening": `cluster up` reads the child's stdout up to that line.
  if (const std::string metrics = router.metrics_address(); !metrics.empty()) {
    std::printf("metrics %s\n", metrics.c_str());
  }
  if (const std::string http = router.http_address(); !http.empty()) std::printf("http %s\n", http.c_str());
  std::printf("internal %s\n", router.internal_address().c_str());
  std::printf("listening %s\n", address->c_str());
  std::fflush(stdout);
  WaitForStopSignal(signals);
  router.Drain(*grace);
  router.Wait();
  return 0;
}

}  // namespace indexcache
