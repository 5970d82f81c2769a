// The cluster end to end, with the real `indexcache` binary's services as separate processes on
// loopback (router, one prefill worker, two decode workers) and the C++ SDK as the client:
// disaggregated greedy output equals the in-process engine's token for token (both transports, two
// IndexCache patterns, and an adaptive pattern whose requests run the in-process engine's pattern for
// their length); 32 concurrent streams complete; a cancel frees the decode workers' KV; the
// streams of a killed decode worker migrate to the survivor and complete with the engine's tokens, and
// new requests go to the survivor; malformed requests get INVALID_ARGUMENT.
#include <signal.h>

#include <atomic>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "grpcpp/grpcpp.h"
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

struct ClusterParam {
  // (Brace initializers: the instantiations below may leave the adaptive members out.)
  std::string transport{};
  std::string pattern{};  // "" = the checkpoint's own (FFSFS)
  // --length-patterns: one range, from `min_prompt_tokens` on (0: none).
  int32_t min_prompt_tokens{0};
  std::string long_pattern{};
};

std::string ParamName(const testing::TestParamInfo<ClusterParam>& info) {
  return info.param.transport + (info.param.pattern.empty() ? "_own" : "_" + info.param.pattern) +
         (info.param.long_pattern.empty() ? "" : "_from" + std::to_string(info.param.min_prompt_tokens) + "_" +
                                                     info.param.long_pattern);
}

class ClusterTest : public testing::TestWithParam<ClusterParam> {
 protected:
  void SetUp() override {
    const ClusterParam& p = GetParam();
    std::vector<std::string> pattern_flag;
    if (!p.pattern.empty()) pattern_flag = {"--index-pattern", p.pattern};
    std::vector<std::string> worker_pattern_flags = pattern_flag;
    if (!p.long_pattern.empty()) {
      worker_pattern_flags.insert(worker_pattern_flags.end(),
                                  {"--length-patterns", absl::StrCat(p.min_prompt_tokens, ":", p.long_pattern)});
    }
    std::vector<std::string> router_argv = {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel,
                                            "--transport", p.transport, "--heartbeat-timeout", "2"};
    router_argv.insert(router_argv.end(), pattern_flag.begin(), pattern_flag.end());
    router_ = StartService("router", router_argv, &router_address_);
    ASSERT_NE(router_, nullptr);
    for (const std::string role : {"prefill", "decode", "decode"}) {
      const std::string name = role + std::to_string(workers_.size());
      std::vector<std::string> argv = {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                       e2e::InternalAddress(*router_), "--worker-id", name, "--model", kModel,
                                       "--threads", "1", "--kv-cache-mb", "8", "--block-size", "16",
                                       "--max-batch-tokens", "16"};
      argv.insert(argv.end(), worker_pattern_flags.begin(), worker_pattern_flags.end());
      std::string address;
      workers_.push_back(StartService(name, argv, &address));
      ASSERT_NE(workers_.back(), nullptr);
      worker_addresses_.push_back(address);
    }
    auto c = e2e::ConnectClient(router_address_, absl::Seconds(60));
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    // Ready once the router's pool holds all three workers.
    ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 1 && decode == 2; }))
        << "the router's pool never held every worker";
  }


  // The pattern a prompt of `length` tokens runs (its range's with --length-patterns), as a string
  // for the in-process engine ("" = the checkpoint's own).
  std::string PatternFor(size_t length) const {
    const ClusterParam& p = GetParam();
    const bool long_prompt = !p.long_pattern.empty() && static_cast<int64_t>(length) >= p.min_prompt_tokens;
    return long_prompt ? p.long_pattern : p.pattern;
  }
  // Greedy tokens of the in-process engine for the same prompt, in the pattern the cluster runs it with.
  std::vector<int32_t> EngineGreedy(const std::vector<int32_t>& prompt, int32_t max_new) {
    return e2e::EngineGreedy(prompt, max_new, PatternFor(prompt.size()));
  }

  // free_kv_blocks == total_kv_blocks on every decode worker still running, within `timeout`.
  bool DecodeKvAllFree(absl::Duration timeout) {
    return e2e::WaitForDecodeKvFree(
        [&] {
          std::vector<std::string> running;
          for (size_t i = 1; i < worker_addresses_.size(); ++i) {
            if (!workers_[i]->Exited()) running.push_back(worker_addresses_[i]);
          }
          return running;
        },
        timeout);
  }

  std::unique_ptr<cli::ChildProcess> router_;
  std::string router_address_;
  std::vector<std::unique_ptr<cli::ChildProcess>> workers_;  // prefill, decode, decode
  std::vector<std::string> worker_addresses_;
  std::optional<client::Client> client_;
};

TEST_P(ClusterTest, DisaggregatedGreedyEqualsInProcessEngine) {
  const std::vector<int32_t> input = GoldenInput();
  for (size_t length : {size_t{5}, size_t{17}, input.size()}) {
    const std::vector<int32_t> prompt(input.begin(), input.begin() + length);
    auto result = client_->Generate(Greedy(prompt, 12));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->final.finish_reason, client::FinishReason::kLength) << result->final.error;
    EXPECT_EQ(result->output_ids, EngineGreedy(prompt, 12)) << "prompt length " << length;
    EXPECT_EQ(result->final.prompt_tokens, static_cast<int32_t>(length));
    const std::string pattern = PatternFor(length);
    EXPECT_EQ(result->final.index_pattern, pattern.empty() ? "FFSFS" : pattern);
  }
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10))) << "finished requests must free the decode workers' KV";
  // The router tells clients the ranges its workers registered.
  absl::StatusOr<client::ModelInfo> info = client_->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const ClusterParam& p = GetParam();
  EXPECT_EQ(info->length_patterns,
            p.long_pattern.empty() ? "" : absl::StrCat(p.min_prompt_tokens, ":", p.long_pattern));
}

TEST_P(ClusterTest, ThirtyTwoConcurrentStreamsComplete) {
  const std::vector<int32_t> input = GoldenInput();
  std::atomic<int> completed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      const std::vector<int32_t> prompt(input.begin(), input.begin() + 4 + i % 20);
      auto result = client_->Generate(Greedy(prompt, 8));
      if (result.ok() && result->final.finish_reason == client::FinishReason::kLength &&
          result->output_ids.size() == 8) {
        ++completed;
      } else {
        ADD_FAILURE() << "stream " << i << ": " << (result.ok() ? result->final.error : result.status().ToString());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(completed.load(), 32);
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10)));
}

TEST_P(ClusterTest, CancelMidStreamFreesDecodeKv) {
  client::GenerateStream stream = client_->Stream(Greedy(GoldenInput(), 400));
  int chunks = 0;
  while (chunks < 3) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    ASSERT_TRUE(chunk->has_value());
    ++chunks;
  }
  stream.Cancel();
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10))) << "a cancelled request must free its KV blocks";
}

TEST_P(ClusterTest, AKilledDecodeWorkersStreamsMigrateToTheSurvivorUnchanged) {
  const std::vector<int32_t> input = GoldenInput();
  const std::vector<int32_t> truth = EngineGreedy(input, 400);  // the model has 512 positions
  std::vector<client::GenerateStream> streams;
  for (int i = 0; i < 4; ++i) {
    client::GenerateRequest request = Greedy(input, 400);
    request.timeout = absl::Seconds(60);
    streams.push_back(client_->Stream(request));
  }
  std::vector<std::vector<int32_t>> tokens(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    while (tokens[i].empty()) {  // the first chunk carries the request id alone
      auto chunk = streams[i].Next();
      ASSERT_TRUE(chunk.ok()) << chunk.status();
      ASSERT_TRUE(chunk->has_value());
      ASSERT_FALSE((*chunk)->final.has_value()) << "400 tokens before the kill";
      tokens[i].insert(tokens[i].end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
    }
  }
  // The victim: the decode worker running more of the streams (workers_[1] is decode1, [2] decode2).
  auto running = [&](size_t i) {
    auto stub = v1::DecodeWorker::NewStub(e2e::WorkerChannel(worker_addresses_[i]));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::WorkerLoad load;
    return stub->GetLoad(&ctx, v1::LoadRequest(), &load).ok() ? load.running_sequences() : -1;
  };
  const size_t victim = running(1) >= running(2) ? 1 : 2;
  const std::string survivor = victim == 1 ? "decode2" : "decode1";
  ASSERT_GT(running(victim), 0);
  const absl::Time killed_at = absl::Now();
  workers_[victim]->Signal(SIGKILL);
  for (size_t i = 0; i < streams.size(); ++i) {
    std::optional<client::FinalInfo> final;
    for (;;) {
      auto chunk = streams[i].Next();
      ASSERT_TRUE(chunk.ok()) << "stream " << i << ": " << chunk.status();
      if (!chunk->has_value()) break;
      tokens[i].insert(tokens[i].end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
      if ((*chunk)->final) final = (*chunk)->final;
    }
    ASSERT_TRUE(final.has_value());
    EXPECT_EQ(final->finish_reason, client::FinishReason::kLength);
    EXPECT_EQ(final->generated_tokens, 400);
    EXPECT_EQ(final->decode_worker, survivor) << "stream " << i;
    EXPECT_EQ(tokens[i], truth) << "stream " << i;
  }
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(30)) << "streams must end well before their deadline";
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10)));
  for (int i = 0; i < 4; ++i) {
    auto result = client_->Generate(Greedy(std::vector<int32_t>(input.begin(), input.begin() + 9), 6));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->final.finish_reason, client::FinishReason::kLength);
    EXPECT_EQ(result->final.decode_worker, survivor) << "routed to the dead worker";
  }
}

TEST_P(ClusterTest, MalformedRequestsAreInvalidArgument) {
  std::vector<client::GenerateRequest> bad;
  bad.push_back(Greedy({}, 4));                                        // empty prompt
  bad.push_back(Greedy({1, 2, 100000}, 4));                            // out of vocabulary
  bad.push_back(Greedy({1, 2, 3}, 0));                                 // max_new_tokens 0
  bad.push_back(Greedy(std::vector<int32_t>(9000, 1), 4));             // past the context limit
  client::GenerateRequest nan = Greedy({1, 2, 3}, 4);
  nan.sampling.temperature = std::nanf("");
  bad.push_back(nan);
  client::GenerateRequest negative = Greedy({1, 2, 3}, 4);
  negative.sampling.temperature = -1.0f;
  bad.push_back(negative);
  for (size_t i = 0; i < bad.size(); ++i) {
    auto result = client_->Generate(bad[i]);
    ASSERT_FALSE(result.ok()) << "request " << i << " was accepted";
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << i << ": " << result.status();
    EXPECT_FALSE(result.status().message().empty());
  }
}

INSTANTIATE_TEST_SUITE_P(Loopback, ClusterTest,
                         testing::Values(ClusterParam{"grpc", ""}, ClusterParam{"tcp", ""},
                                         ClusterParam{"grpc", "FSSSS"},
                                         ClusterParam{"tcp", "", /*min_prompt_tokens=*/17, "FSSSS"}),
                         ParamName);

}  // namespace
}  // namespace indexcache
