// indexcache: the command-line entry point. Engine subcommands (generate, score, perplexity,
// search), the cluster's services (router, prefill-worker, decode-worker), `cluster up` and
// `client generate`.
#include <cstdio>
#include <string>
#include <vector>

#include "common/util/build_info.h"
#include "services/decode_worker/decode_worker_command.h"
#include "services/prefill_worker/prefill_worker_command.h"
#include "services/router/router_command.h"
#include "tools/indexcache/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: indexcache <command> [flags]\n"
    "  generate    stream a completion for a prompt\n"
    "  score       write a prompt's logits and every layer's top-k selection to safetensors\n"
    "  perplexity  mean negative log-likelihood and perplexity of a text file\n"
    "  search      pick the layers that keep their indexer (IndexCache greedy search on a calibration file)\n"
    "  cluster up  a local router + prefill + decode cluster on loopback\n"
    "  client generate  one request to a running cluster's router\n"
    "  router | prefill-worker | decode-worker  one service of the cluster\n"
    "Run `indexcache <command> --help` for its flags; `indexcache --version` prints the build.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  if (command == "generate") return indexcache::cli::RunGenerate(rest);
  if (command == "score") return indexcache::cli::RunScore(rest);
  if (command == "perplexity") return indexcache::cli::RunPerplexity(rest);
  if (command == "search") return indexcache::cli::RunSearch(rest);
  if (command == "cluster") return indexcache::cli::RunCluster(rest);
  if (command == "client") return indexcache::cli::RunClient(rest);
  if (command == "router") return indexcache::RunRouterCommand(rest);
  if (command == "prefill-worker") return indexcache::RunPrefillWorkerCommand(rest);
  if (command == "decode-worker") return indexcache::RunDecodeWorkerCommand(rest);
  if (command == "--version") {
    std::printf("%s\n", indexcache::VersionLine("indexcache").c_str());
    return 0;
  }
  if (command == "--help" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "indexcache: unknown command '%s'\n%s", command.c_str(), kUsage);
  return 2;
}
