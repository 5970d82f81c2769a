// `indexcache-router` / `indexcache router`: runs a router until SIGINT or SIGTERM, then drains it.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/router/router.h"
#include "tools/indexcache/args.h"

namespace indexcache {

// RouterOptions from `--listen ADDR --model DIR [--prefill ADDR]… [--decode ADDR]… [--prefill-dns HOST:PORT]…
// [--decode-dns HOST:PORT]… [--dns-interval S] [--transport grpc|tcp]
// [--index-pattern P] [--queue-limit N] [--heartbeat-timeout S] [--health-interval S] [--request-timeout S]
// [--metrics-listen HOST:PORT] [--http-listen HOST:PORT] [--api-key-file FILE]
// [--tls-cert-file FILE --tls-key-file FILE [--tls-client-ca-file FILE]]`.
absl::StatusOr<RouterOptions> RouterOptionsFromArgs(const cli::Args& args);

// The subcommand: argv without the program (and subcommand) name. Prints "listening ADDR" once serving.
int RunRouterCommand(const std::vector<std::string>& argv);

}  // namespace indexcache
