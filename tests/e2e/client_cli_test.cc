// `indexcache client generate`'s streamed output against a running cluster: what it prints on stdout
// is exactly the answer's text (the --json result of the same request), never token ids — even when
// a chunk carries no text, as the stop token's does — and stderr ends with the IndexCache pattern
// and its savings.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_common.h"

namespace indexcache::e2e {
namespace {

// A model with a tokenizer: the client prints text, not ids.
const std::string kTextModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

struct Output {
  std::string out;
  std::string err;
};

// Runs the command through the shell; stderr goes to a file beside it.
Output RunShell(const std::string& command) {
  const std::string err_path = testing::TempDir() + "/client_cli_test.err";
  Output output;
  FILE* pipe = popen((command + " 2>" + err_path).c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return output;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.out.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << command;
  if (FILE* err = fopen(err_path.c_str(), "r")) {
    for (size_t n; (n = fread(buffer, 1, sizeof(buffer), err)) > 0;) output.err.append(buffer, n);
    fclose(err);
  }
  return output;
}

TEST(ClientCliTest, StreamedOutputIsTheAnswersTextAndNoTokenIds) {
  std::string router_address;
  auto router = StartService("router", {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kTextModel},
                             &router_address);
  ASSERT_NE(router, nullptr);
  std::vector<std::unique_ptr<cli::ChildProcess>> workers;
  for (const std::string role : {"prefill", "decode"}) {
    std::string address;
    workers.push_back(StartService(role, {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                          e2e::InternalAddress(*router), "--model", kTextModel, "--threads", "1",
                                          "--index-freq", "2"},
                                   &address));
    ASSERT_NE(workers.back(), nullptr);
  }
  auto client = ConnectClient(router_address);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(WaitForPool(*client, [](int prefill, int decode) { return prefill == 1 && decode == 1; }));

  const std::string base = kBinary + " client generate --router " + router_address +
                           " --prompt 'The river ran past the old mill and on towards the sea' --temperature 0"
                           " --ignore-eos --max-new-tokens 24";
  const nlohmann::json free_run = nlohmann::json::parse(RunShell(base + " --json").out);
  const std::vector<int32_t> ids = free_run["output_ids"];
  ASSERT_EQ(ids.size(), 24u);
  // Stop at the first token not seen before it, somewhere inside the answer: that token's chunk then
  // holds an id and no text, the case that once printed the id.
  size_t stop_at = 8;
  while (stop_at < ids.size() && std::find(ids.begin(), ids.begin() + stop_at, ids[stop_at]) != ids.begin() + stop_at) {
    ++stop_at;
  }
  ASSERT_LT(stop_at, ids.size()) << "no fresh token to stop at";
  const std::string stop = " --stop-id " + std::to_string(ids[stop_at]);
  const nlohmann::json expected = nlohmann::json::parse(RunShell(base + stop + " --json").out);
  ASSERT_EQ(expected["finish_reason"], "stop");
  ASSERT_EQ(expected["output_ids"].size(), stop_at + 1);

  const Output streamed = RunShell(base + stop);
  EXPECT_EQ(streamed.out, expected["text"].get<std::string>() + "\n");
  const std::string pattern = expected["index_pattern"];
  const auto full = std::count(pattern.begin(), pattern.end(), 'F');
  ASSERT_LT(full, 8) << "--index-freq 2 leaves Shared layers";
  EXPECT_NE(streamed.err.find("IndexCache pattern " + pattern + ": " + std::to_string(full) +
                              " of 8 layers run the indexer; the other " + std::to_string(8 - full) + " reuse"),
            std::string::npos)
      << streamed.err;
}

}  // namespace
}  // namespace indexcache::e2e
