// What the whole-cluster tests share: the model they serve (the moe_freq2 golden: MoE, Shared layers,
// transformers' greedy continuation known), the `indexcache` binary whose services they start (as
// child processes, StartService), the wait for the router's pool, and the greedy request they send
// through the C++ SDK. Every service runs its internal plane authenticated, as in production: each
// gets the process's cluster token file, workers register at the router's internal address, and a
// test calling a worker directly uses WorkerChannel, which carries the token.
#pragma once

#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/auth/grpc_token.h"
#include "common/engine/engine.h"
#include "common/util/status_macros.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/child_process.h"
#include "tools/indexcache/run_directory.h"

namespace indexcache::e2e {

inline const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";
inline const std::string kBinary = std::string(INDEXCACHE_BINARY_DIR) + "/tools/indexcache";

// The golden's prompt ids.
inline std::vector<int32_t> GoldenInput() {
  std::ifstream in(kModel + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str())["input_ids"].get<std::vector<int32_t>>();
}

// Greedy decoding of exactly `max_new` tokens (EOS ignored), so outputs compare token for token.
inline client::GenerateRequest Greedy(std::vector<int32_t> prompt, int32_t max_new) {
  client::GenerateRequest request = client::GenerateRequest::FromIds(std::move(prompt));
  request.sampling.temperature = 0.0f;
  request.sampling.max_new_tokens = max_new;
  request.sampling.ignore_eos = true;
  return request;
}

// Greedy tokens of the in-process engine for `prompt` under `pattern` ("" = the checkpoint's own),
// EOS ignored: the truth a cluster's output is compared with.
inline std::vector<int32_t> EngineGreedy(const std::vector<int32_t>& prompt, int32_t max_new,
                                         const std::string& pattern = "") {
  EngineOptions options;
  options.model_dir = kModel;
  options.index_pattern = pattern;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = max_new;
  params.ignore_eos = true;
  EXPECT_TRUE((*engine)->Submit(prompt, params).ok());
  std::vector<int32_t> tokens;
  while ((*engine)->HasWork()) {
    auto events = (*engine)->Step();
    EXPECT_TRUE(events.ok());
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      if (e.token >= 0) tokens.push_back(e.token);
    }
  }
  return tokens;
}

// The cluster token of every service a test starts, fresh for each test process as `cluster up` makes
// one, in a file of a run directory that lives (and is removed) with the process.
struct TestClusterToken {
  std::unique_ptr<cli::RunDirectory> directory;
  std::string file;
  ClusterToken token;
};

// The process's token, made at the first call; a test that finds none made fails.
inline const TestClusterToken& ProcessClusterToken() {
  static const absl::StatusOr<TestClusterToken> made = []() -> absl::StatusOr<TestClusterToken> {
    TestClusterToken token;
    ASSIGN_OR_RETURN(token.directory, cli::RunDirectory::Create());
    ASSIGN_OR_RETURN(const std::string secret, ClusterToken::GenerateSecret());
    ASSIGN_OR_RETURN(token.file, token.directory->WriteClusterToken(secret));
    ASSIGN_OR_RETURN(token.token, ClusterToken::FromSecret(secret));
    return token;
  }();
  static const TestClusterToken none;
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? *made : none;
}

// `--cluster-token-file FILE` naming the process's token.
inline std::vector<std::string> ClusterTokenFlags() { return {"--cluster-token-file", ProcessClusterToken().file}; }

// A channel to a worker's gRPC port whose calls carry the process's token.
inline std::shared_ptr<grpc::Channel> WorkerChannel(const std::string& address) {
  return InternalChannel(address, ProcessClusterToken().token);
}

// What a worker's --router names: the internal address a router started by StartService announced.
inline std::string InternalAddress(const cli::ChildProcess& router) { return router.Announced("internal"); }

// Starts one service of the `indexcache` binary with the process's cluster token (ClusterTokenFlags) and
// waits for its "listening" line; null (and a failure recorded) when it does not come up. `address`
// receives where it listens.
inline std::unique_ptr<cli::ChildProcess> StartService(const std::string& name, std::vector<std::string> argv,
                                                       std::string* address) {
  const std::vector<std::string> token = ClusterTokenFlags();
  argv.insert(argv.end(), token.begin(), token.end());
  auto child = cli::ChildProcess::Spawn(name, argv);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return nullptr;
  auto listening = (*child)->WaitListening(absl::Seconds(60));
  EXPECT_TRUE(listening.ok()) << listening.status();
  if (!listening.ok()) return nullptr;
  *address = *listening;
  return std::move(*child);
}

// The router's SDK client as the tests use it: a connect timeout long enough for a loaded two-core
// machine, and `default_timeout` per call when given.
inline absl::StatusOr<client::Client> ConnectClient(const std::string& router_address,
                                                   std::optional<absl::Duration> default_timeout = std::nullopt) {
  client::ClientOptions options;
  if (default_timeout) options.default_timeout = *default_timeout;
  options.connect_timeout = absl::Seconds(10);
  return client::Client::Connect(router_address, options);
}

// Polls the decode workers at `addresses()` (asked again each round, so a caller can leave out the
// ones that exited) until each reports every KV block free; false after `timeout`.
template <typename Addresses>
bool WaitForDecodeKvFree(Addresses addresses, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    bool all_free = true;
    for (const std::string& address : addresses()) {
      auto stub = ::indexcache::v1::DecodeWorker::NewStub(WorkerChannel(address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      ::indexcache::v1::WorkerLoad load;
      if (!stub->GetLoad(&ctx, ::indexcache::v1::LoadRequest(), &load).ok() || load.free_kv_blocks() != load.total_kv_blocks()) {
        all_free = false;
      }
    }
    if (all_free) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

// Polls the router until its pool's worker counts satisfy `wanted(prefill, decode)`, up to 10 s.
template <typename Wanted>
bool WaitForPool(const client::Client& client, Wanted wanted) {
  for (int i = 0; i < 200; ++i) {
    auto info = client.GetModelInfo();
    if (info.ok() && wanted(info->prefill_workers, info->decode_workers)) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

}  // namespace indexcache::e2e
