// Prefix-aware routing, end to end: the `indexcache` binary's router with two prefill workers and one
// decode worker, all with the prefix cache. Several sessions take turns, each turn's prompt the
// previous turn's prompt and output plus new tokens. The prefill workers report their cached blocks
// at once (not a heartbeat later), so every turn after a session's first goes to the prefill worker
// that computed the session's previous turn, which reuses that prefix; and every turn's output is the
// in-process engine's, computed without any cache.
#include <map>
#include <random>

#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "tests/e2e/e2e_common.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::Greedy;
using e2e::kBinary;
using e2e::kModel;
using e2e::StartService;
using e2e::WaitForPool;

constexpr int kSessions = 3;
constexpr int kTurns = 3;
constexpr int kFirstTurnTokens = 64;
constexpr int kNewTokensPerTurn = 40;
constexpr int32_t kOutputTokens = 8;

class PrefixRoutingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A heartbeat every 4 s: far longer than a turn, so only the workers' immediate reports can tell
    // the router what the previous turn cached.
    router_ = StartService("router", {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel,
                                      "--heartbeat-timeout", "12"},
                           &router_address_);
    ASSERT_NE(router_, nullptr);
    for (const std::string id : {"prefill-a", "prefill-b"}) {
      workers_.push_back(StartWorker("prefill", id));
      ASSERT_NE(workers_.back(), nullptr);
    }
    workers_.push_back(StartWorker("decode", "decode-0"));
    ASSERT_NE(workers_.back(), nullptr);
    auto c = e2e::ConnectClient(router_address_, absl::Seconds(120));
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 2 && decode == 1; }))
        << "the router's pool never held all three workers";
  }

  std::unique_ptr<cli::ChildProcess> StartWorker(const std::string& role, const std::string& id) {
    std::string ignored;
    return StartService(id, {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                             e2e::InternalAddress(*router_), "--worker-id", id, "--model", kModel, "--threads", "1",
                             "--block-size", "16", "--max-batch-tokens", "64"},
                        &ignored);
  }

  std::unique_ptr<cli::ChildProcess> router_;
  std::vector<std::unique_ptr<cli::ChildProcess>> workers_;
  std::string router_address_;
  std::optional<client::Client> client_;
};

TEST_F(PrefixRoutingTest, ASessionsTurnsFollowThePrefillWorkerHoldingItsPrefix) {
  std::mt19937 rng(16);
  std::uniform_int_distribution<int32_t> token(0, 255);
  auto fresh = [&](int n) {
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = token(rng);
    return ids;
  };
  std::vector<std::vector<int32_t>> contexts(kSessions);
  std::vector<std::string> previous_worker(kSessions);
  int followed = 0;
  // Turns interleave across sessions: session s's turn t+1 comes after every session's turn t.
  for (int turn = 0; turn < kTurns; ++turn) {
    for (int s = 0; s < kSessions; ++s) {
      std::vector<int32_t> added = fresh(turn == 0 ? kFirstTurnTokens : kNewTokensPerTurn);
      contexts[s].insert(contexts[s].end(), added.begin(), added.end());
      absl::StatusOr<client::GenerateResult> result = client_->Generate(Greedy(contexts[s], kOutputTokens));
      ASSERT_TRUE(result.ok()) << "session " << s << " turn " << turn << ": " << result.status();
      EXPECT_EQ(result->output_ids, e2e::EngineGreedy(contexts[s], kOutputTokens))
          << "session " << s << " turn " << turn << " differs from the engine's cold run";
      const std::string& worker = result->final.prefill_worker;
      if (turn > 0) {
        EXPECT_EQ(worker, previous_worker[s]) << "session " << s << " turn " << turn << " left its prefix";
        followed += worker == previous_worker[s];
      }
      previous_worker[s] = worker;
      contexts[s].insert(contexts[s].end(), result->output_ids.begin(), result->output_ids.end());
    }
  }
  EXPECT_EQ(followed, kSessions * (kTurns - 1));
}

}  // namespace
}  // namespace indexcache
