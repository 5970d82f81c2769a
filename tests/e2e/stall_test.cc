// Stage timeouts end to end: a worker stopped with SIGSTOP (alive to the kernel, silent to everyone)
// while it holds a request. The router is told to notice nothing by heartbeats or health checks for a
// minute, so only the stage timeout (--stall-timeout) can end the wait; each request's deadline is
// two minutes. Truths: the in-process engine's greedy tokens, the worker ids in the final message,
// and a status that arrives long before the deadline.
#include <signal.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "tests/e2e/e2e_common.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::EngineGreedy;
using e2e::GoldenInput;
using e2e::Greedy;
using e2e::kBinary;
using e2e::kModel;
using e2e::StartService;
using e2e::WaitForPool;

constexpr absl::Duration kDeadline = absl::Seconds(120);
// Far below the deadline, far above the stall timeout plus a retry on two busy cores.
constexpr absl::Duration kPromptly = absl::Seconds(45);

class StallTest : public ::testing::Test {
 protected:
  void StartRouter(absl::Duration stall_timeout) {
    router_ = StartService("router",
                           {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel, "--stall-timeout",
                            std::to_string(absl::ToInt64Seconds(stall_timeout)), "--heartbeat-timeout", "60",
                            "--health-interval", "60"},
                           &router_address_);
    ASSERT_NE(router_, nullptr);
    auto c = e2e::ConnectClient(router_address_, kDeadline);
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
  }

  void TearDown() override {
    for (auto& [name, worker] : workers_) worker->Signal(SIGCONT);  // a stopped child cannot take SIGTERM
  }

  // Starts a worker registered with the router as `name`; its gRPC address.
  std::string StartWorker(const std::string& role, const std::string& name) {
    std::string address;
    workers_[name] = StartService(name,
                                  {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                   e2e::InternalAddress(*router_), "--worker-id", name, "--model", kModel, "--threads",
                                   "1", "--kv-cache-mb", "8", "--block-size", "16", "--max-batch-tokens", "16"},
                                  &address);
    EXPECT_NE(workers_[name], nullptr);
    return address;
  }

  std::unique_ptr<cli::ChildProcess> router_;
  std::string router_address_;
  std::map<std::string, std::unique_ptr<cli::ChildProcess>> workers_;
  std::optional<client::Client> client_;
};

// Blocks of `decode` in use, or -1 when it does not answer.
int UsedBlocks(const std::string& decode) {
  auto stub = v1::DecodeWorker::NewStub(e2e::WorkerChannel(decode));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::WorkerLoad load;
  if (!stub->GetLoad(&context, v1::LoadRequest(), &load).ok()) return -1;
  return load.total_kv_blocks() - load.free_kv_blocks();
}

TEST_F(StallTest, ARequestOnAStoppedPrefillWorkerIsRetriedOnAnotherOne) {
  // Long enough for prefill1 to start and join the pool before the retry looks for it.
  constexpr absl::Duration kStall = absl::Seconds(8);
  ASSERT_NO_FATAL_FAILURE(StartRouter(kStall));
  const std::string decode = StartWorker("decode", "decode0");
  StartWorker("prefill", "prefill0");
  ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 1 && decode == 1; }));
  const std::vector<int32_t> prompt = GoldenInput();
  // One request while prefill0 runs: the router holds a connection to it, as to any busy worker, so
  // the next call reaches the stopped process and waits instead of failing to connect.
  ASSERT_TRUE(client_->Generate(Greedy(prompt, 2)).ok());
  workers_["prefill0"]->Signal(SIGSTOP);

  const absl::Time sent = absl::Now();
  client::GenerateStream stream = client_->Stream(Greedy(prompt, 8));
  // The decode worker reserved the prompt's blocks: the request's first attempt is under way, and its
  // prefill can only be on prefill0, the one prefill worker in the pool.
  bool reserved = false;
  for (int i = 0; i < 600 && !reserved; ++i) {
    reserved = UsedBlocks(decode) > 0;
    if (!reserved) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(reserved) << "the decode worker never admitted the request";
  StartWorker("prefill", "prefill1");
  ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 2 && decode == 1; }));
  ASSERT_LT(absl::Now() - sent, kStall) << "prefill1 joined the pool after the stall timeout: the scenario "
                                           "needs a longer --stall-timeout on this machine";

  std::vector<int32_t> tokens;
  std::optional<client::FinalInfo> final;
  for (;;) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) break;
    tokens.insert(tokens.end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
    if ((*chunk)->final) final = (*chunk)->final;
  }
  EXPECT_LT(absl::Now() - sent, kPromptly) << "the request waited on the stopped worker";
  ASSERT_TRUE(final.has_value());
  EXPECT_EQ(final->finish_reason, client::FinishReason::kLength);
  EXPECT_EQ(final->prefill_worker, "prefill1");
  EXPECT_EQ(final->decode_worker, "decode0");
  EXPECT_EQ(tokens, EngineGreedy(prompt, 8));
}

TEST_F(StallTest, AStreamWhoseDecodeWorkerStopsEndsUnavailableLongBeforeItsDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartRouter(absl::Seconds(2)));
  StartWorker("decode", "decode0");
  StartWorker("prefill", "prefill0");
  ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 1 && decode == 1; }));
  client::GenerateStream stream = client_->Stream(Greedy(GoldenInput(), 450));  // 56 + 450 of 512 positions
  int tokens = 0;
  while (tokens == 0) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    ASSERT_TRUE(chunk->has_value());
    ASSERT_FALSE((*chunk)->final.has_value()) << "finished before the worker could be stopped";
    tokens += static_cast<int>((*chunk)->token_ids.size());
  }
  workers_["decode0"]->Signal(SIGSTOP);
  const absl::Time stopped = absl::Now();
  absl::Status ended;
  for (;;) {
    auto chunk = stream.Next();
    if (!chunk.ok()) {
      ended = chunk.status();
      break;
    }
    ASSERT_TRUE(chunk->has_value());
    ASSERT_FALSE((*chunk)->final.has_value()) << "450 tokens streamed in the moment before SIGSTOP";
  }
  EXPECT_LT(absl::Now() - stopped, kPromptly) << "the stream waited on the stopped worker";
  EXPECT_EQ(ended.code(), absl::StatusCode::kUnavailable) << ended;
  EXPECT_NE(ended.message().find("made no progress"), std::string::npos) << ended;
  EXPECT_NE(ended.message().find("decode0"), std::string::npos) << ended;
}

}  // namespace
}  // namespace indexcache
