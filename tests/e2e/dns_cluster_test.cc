// The cluster as deploy/k8s runs it, on loopback: workers listen on the wildcard address and do not
// register; the router finds them through DNS names (`localhost` here, a headless Service there).
// Truths: the in-process engine's greedy tokens for the same prompt, and the drain contract (a SIGTERM
// decode worker finishes the stream it runs, exits 0, and leaves the pool).
#include <signal.h>

#include <fstream>
#include <sstream>

#include "common/engine/engine.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_common.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::GoldenInput;
using e2e::Greedy;
using e2e::kBinary;
using e2e::StartService;
using e2e::WaitForPool;
using e2e::kModel;

std::string Port(const std::string& address) { return address.substr(address.rfind(':') + 1); }

// Greedy with room for a loaded machine.
client::GenerateRequest GreedyWithTimeout(std::vector<int32_t> prompt, int32_t max_new) {
  client::GenerateRequest request = Greedy(std::move(prompt), max_new);
  request.timeout = absl::Seconds(120);
  return request;
}

class DnsClusterTest : public testing::Test {
 protected:
  void SetUp() override {
    for (const std::string role : {"prefill", "decode"}) {
      std::vector<std::string> argv = {kBinary, role + "-worker", "--listen", "0.0.0.0:0", "--model", kModel,
                                       "--threads", "1", "--kv-cache-mb", "8", "--block-size", "16",
                                       "--max-batch-tokens", "16"};
      std::string address;
      workers_.push_back(StartService(role, argv, &address));
      ASSERT_NE(workers_.back(), nullptr);
      ports_.push_back(Port(address));
    }
    router_ = StartService("router",
                    {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel, "--prefill-dns",
                     "localhost:" + ports_[0], "--decode-dns", "localhost:" + ports_[1], "--dns-interval", "0.2",
                     "--health-interval", "0.2", "--drain-grace", "30"},
                    &router_address_);
    ASSERT_NE(router_, nullptr);
    auto c = e2e::ConnectClient(router_address_);
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    // Where /etc/hosts also maps localhost to ::1 and the wildcard listener takes IPv6 too, each worker
    // is in the pool twice, once per address.
    ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill >= 1 && decode >= 1; }))
        << "the router never found both workers through DNS";
  }

  void TearDown() override {
    for (auto& w : workers_) {
      if (w) w->Signal(SIGTERM);
    }
    if (router_) router_->Signal(SIGTERM);
    for (auto& w : workers_) {
      if (w) w->Stop(absl::Seconds(10));
    }
    if (router_) router_->Stop(absl::Seconds(10));
  }


  std::vector<std::unique_ptr<cli::ChildProcess>> workers_;  // prefill, decode
  std::vector<std::string> ports_;
  std::unique_ptr<cli::ChildProcess> router_;
  std::string router_address_;
  std::optional<client::Client> client_;
};

TEST_F(DnsClusterTest, DiscoveredWorkersServeTheEnginesGreedyOutput) {
  const std::vector<int32_t> input = GoldenInput();
  auto result = client_->Generate(GreedyWithTimeout(input, 12));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->final.finish_reason, client::FinishReason::kLength) << result->final.error;

  EngineOptions options;
  options.model_dir = kModel;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = 12;
  params.ignore_eos = true;
  ASSERT_TRUE((*engine)->Submit(input, params).ok());
  std::vector<int32_t> want;
  while ((*engine)->HasWork()) {
    auto events = (*engine)->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    for (const TokenEvent& e : *events) {
      if (e.token >= 0) want.push_back(e.token);
    }
  }
  EXPECT_EQ(result->output_ids, want);
}

TEST_F(DnsClusterTest, ADecodeWorkerGivenSigtermFinishesItsStreamExitsAndLeavesThePool) {
  client::GenerateStream stream = client_->Stream(GreedyWithTimeout(GoldenInput(), 400));
  size_t tokens = 0;
  while (tokens == 0) {  // the first chunk carries the request id alone
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    ASSERT_TRUE(chunk->has_value());
    tokens += (*chunk)->token_ids.size();
  }
  workers_[1]->Signal(SIGTERM);  // what the kubelet sends a pod scaled away or rolled

  std::optional<client::FinalInfo> final;
  for (;;) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) break;
    tokens += (*chunk)->token_ids.size();
    if ((*chunk)->final) final = (*chunk)->final;
  }
  ASSERT_TRUE(final.has_value());
  EXPECT_EQ(final->finish_reason, client::FinishReason::kLength) << final->error;
  EXPECT_EQ(tokens, 400u);
  EXPECT_EQ(workers_[1]->Stop(absl::Seconds(30)), "exit status 0");
  // DNS still names the address (localhost), but its health checks fail: out of rotation.
  EXPECT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill >= 1 && decode == 0; }));
}

}  // namespace
}  // namespace indexcache
