// Admission that queues, end to end: the `indexcache` binary's router, one prefill worker that takes
// at most 128 queued prompt tokens and one decode worker with a 1 MiB KV cache, on the tiny model.
// A burst far past both — twelve 96-token prompts at once — waits in the router's queue and all of it
// completes; a request larger than the decode worker's whole cache fails at once, saying so.
#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "indexcache/client.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "tests/e2e/e2e_common.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::Greedy;
using e2e::kBinary;
using e2e::StartService;
using e2e::WaitForPool;

const std::string kTinyModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
constexpr int kPromptTokens = 96;
constexpr int kNewTokens = 8;
constexpr int kPrefillBound = 128;  // one 96-token prompt at a time

class AdmissionTest : public testing::Test {
 protected:
  void SetUp() override {
    router_ = StartService("router", {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kTinyModel,
                               "--heartbeat-timeout", "2"},
                    &router_address_);
    ASSERT_NE(router_, nullptr);
    prefill_ = StartWorker("prefill", {"--kv-cache-mb", "8", "--max-queued-tokens", std::to_string(kPrefillBound)});
    ASSERT_NE(prefill_, nullptr);
    decode_ = StartWorker("decode", {"--kv-cache-mb", "1"}, &decode_address_);
    ASSERT_NE(decode_, nullptr);
    auto c = e2e::ConnectClient(router_address_, absl::Seconds(120));
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 1 && decode == 1; }))
        << "the router's pool never held both workers";
  }


  std::unique_ptr<cli::ChildProcess> StartWorker(const std::string& role, const std::vector<std::string>& flags,
                                                 std::string* address = nullptr) {
    std::vector<std::string> argv = {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                     e2e::InternalAddress(*router_), "--worker-id", role, "--model", kTinyModel,
                                     "--threads", "1", "--block-size", "16", "--max-batch-tokens", "64"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string ignored;
    return StartService(role, argv, address != nullptr ? address : &ignored);
  }

  v1::WorkerLoad DecodeLoad() {
    auto stub = v1::DecodeWorker::NewStub(e2e::WorkerChannel(decode_address_));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::WorkerLoad load;
    EXPECT_TRUE(stub->GetLoad(&context, v1::LoadRequest(), &load).ok());
    return load;
  }

  std::unique_ptr<cli::ChildProcess> router_, prefill_, decode_;
  std::string router_address_, decode_address_;
  std::optional<client::Client> client_;
};

TEST_F(AdmissionTest, ABurstPastBothWorkersLimitsWaitsInTheQueueAndAllCompletes) {
  constexpr int kBurst = 12;
  const v1::WorkerLoad load = DecodeLoad();
  const int64_t cache_tokens = int64_t{load.total_kv_blocks()} * load.kv_block_size();
  // The burst must be more than the decode worker holds at once, and each request must fit alone.
  ASSERT_LT(cache_tokens, kBurst * (kPromptTokens + 1)) << "the decode worker's cache holds the whole burst";
  ASSERT_GE(cache_tokens, kPromptTokens + kNewTokens);

  std::atomic<int> completed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kBurst; ++i) {
    threads.emplace_back([&, i] {
      std::vector<int32_t> prompt(kPromptTokens);
      for (int t = 0; t < kPromptTokens; ++t) prompt[t] = (7 * i + 13 * t) % 2000 + 1;
      auto result = client_->Generate(Greedy(prompt, kNewTokens));
      if (result.ok() && result->final.finish_reason == client::FinishReason::kLength &&
          result->output_ids.size() == kNewTokens) {
        ++completed;
      } else {
        ADD_FAILURE() << "request " << i << ": " << (result.ok() ? result->final.error : result.status().ToString());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(completed.load(), kBurst);
  // Nothing leaked: every block is back.
  bool all_free = false;
  for (int i = 0; i < 100 && !all_free; ++i) {
    const v1::WorkerLoad after = DecodeLoad();
    all_free = after.free_kv_blocks() == after.total_kv_blocks();
    if (!all_free) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(all_free);
}

TEST_F(AdmissionTest, ARequestLargerThanTheDecodeWorkersWholeCacheFailsAtOnce) {
  const v1::WorkerLoad load = DecodeLoad();
  const int64_t cache_tokens = int64_t{load.total_kv_blocks()} * load.kv_block_size();
  const absl::Time start = absl::Now();
  auto result = client_->Generate(Greedy(std::vector<int32_t>(cache_tokens - kNewTokens + 1, 5), kNewTokens));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_NE(result.status().message().find("can never fit"), std::string::npos) << result.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // Exactly the whole cache fits.
  auto fits = client_->Generate(Greedy(std::vector<int32_t>(cache_tokens - kNewTokens, 5), kNewTokens));
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(fits->output_ids.size(), static_cast<size_t>(kNewTokens));
}

}  // namespace
}  // namespace indexcache
