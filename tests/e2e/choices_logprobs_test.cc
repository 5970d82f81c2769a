// n choices and logprobs through a whole CPU cluster (router, one prefill and two decode workers as
// processes, the TCP handoff): n = 2 greedy gives two choices equal to each other and to `indexcache
// client generate`'s tokens; seeded choices are the single requests with seed and seed + 1; every
// token's logprobs (the first one's computed on the prefill worker and carried in the handoff
// trailer) match the float64 reference forward pass (tests/reference/naive_dsa.h); an Abort or a
// client's cancel of an n = 2 request ends both choices and frees their KV on every decode worker.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_common.h"
#include "tests/reference/naive_dsa.h"

namespace indexcache::e2e {
namespace {

const std::string kTinyModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
const std::vector<int32_t> kPrompt = {5, 17, 200, 31, 99, 8, 41, 64, 3, 120, 77, 15};
constexpr double kLogprobTolerance = 2e-3;  // as engine_logprobs_test: float32 logits against float64

std::string RunShell(const std::string& command) {
  std::string out;
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return out;
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << command;
  return out;
}

class ChoicesLogprobsTest : public testing::Test {
 protected:
  void SetUp() override {
    router_ = StartService("router",
                           {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kTinyModel, "--transport", "tcp"},
                           &router_address_);
    ASSERT_NE(router_, nullptr);
    for (const std::string role : {"prefill", "decode", "decode"}) {
      const std::string name = role + std::to_string(workers_.size());
      std::string address;
      workers_.push_back(StartService(name,
                                      {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                       InternalAddress(*router_), "--worker-id", name, "--model", kTinyModel,
                                       "--threads", "1", "--kv-cache-mb", "32", "--block-size", "16"},
                                      &address));
      ASSERT_NE(workers_.back(), nullptr);
      addresses_.push_back(address);
    }
    auto c = ConnectClient(router_address_, absl::Seconds(120));
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    ASSERT_TRUE(WaitForPool(*client_, [](int prefill, int decode) { return prefill == 1 && decode == 2; }));
  }

  bool DecodeKvAllFree(absl::Duration timeout) {
    return WaitForDecodeKvFree([&] { return std::vector<std::string>(addresses_.begin() + 1, addresses_.end()); },
                               timeout);
  }

  std::string CliBase() const {
    const std::string file = testing::TempDir() + "/choices_logprobs_prompt.json";
    std::ofstream(file) << "[" << absl::StrJoin(kPrompt, ",") << "]";
    return kBinary + " client generate --router " + router_address_ + " --input-ids " + file;
  }

  std::unique_ptr<cli::ChildProcess> router_;
  std::string router_address_;
  std::vector<std::unique_ptr<cli::ChildProcess>> workers_;  // prefill, decode, decode
  std::vector<std::string> addresses_;
  std::optional<client::Client> client_;
};

TEST_F(ChoicesLogprobsTest, TwoGreedyChoicesEqualClientGenerate) {
  const nlohmann::json single =
      nlohmann::json::parse(RunShell(CliBase() + " --temperature 0 --ignore-eos --max-new-tokens 10 --json"));
  const std::vector<int32_t> truth = single["output_ids"];
  ASSERT_EQ(truth.size(), 10u);

  client::GenerateRequest request = Greedy(kPrompt, 10);
  request.sampling.n = 2;
  auto result = client_->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->choices.size(), 2u);
  for (const client::Choice& choice : result->choices) {
    EXPECT_EQ(choice.output_ids, truth) << "choice " << choice.index;
    EXPECT_EQ(choice.final.finish_reason, client::FinishReason::kLength);
    EXPECT_EQ(choice.final.generated_tokens, 10);
    EXPECT_EQ(choice.final.prompt_tokens, static_cast<int32_t>(kPrompt.size()));
  }
  EXPECT_EQ(result->choices[1].index, 1);
  EXPECT_EQ(result->output_ids, truth);  // choice 0's, flattened

  // The CLI's --n: the same, as JSON.
  const nlohmann::json both =
      nlohmann::json::parse(RunShell(CliBase() + " --temperature 0 --ignore-eos --max-new-tokens 10 --n 2 --json"));
  ASSERT_EQ(both["choices"].size(), 2u);
  for (const nlohmann::json& choice : both["choices"]) EXPECT_EQ(choice["output_ids"].get<std::vector<int32_t>>(), truth);
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10)));
}

TEST_F(ChoicesLogprobsTest, SeededChoicesAreTheSingleRequestsWithSeedPlusIndex) {
  auto sampled = [&](uint64_t seed, int32_t n) {
    client::GenerateRequest request = client::GenerateRequest::FromIds(kPrompt);
    request.sampling.temperature = 1.0f;
    request.sampling.max_new_tokens = 8;
    request.sampling.ignore_eos = true;
    request.sampling.seed = seed;
    request.sampling.n = n;
    auto result = client_->Generate(request);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : client::GenerateResult{};
  };
  const client::GenerateResult both = sampled(42, 2);
  ASSERT_EQ(both.choices.size(), 2u);
  EXPECT_EQ(both.choices[0].output_ids, sampled(42, 1).output_ids);
  EXPECT_EQ(both.choices[1].output_ids, sampled(43, 1).output_ids);
  const client::GenerateResult again = sampled(42, 2);
  ASSERT_EQ(again.choices.size(), 2u);
  EXPECT_EQ(again.choices[1].output_ids, both.choices[1].output_ids);
}

TEST_F(ChoicesLogprobsTest, LogprobsMatchTheReferenceForward) {
  client::GenerateRequest request = Greedy(kPrompt, 6);
  request.sampling.logprobs = true;
  request.sampling.top_logprobs = 3;
  auto result = client_->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<int32_t>& tokens = result->output_ids;
  ASSERT_EQ(tokens.size(), 6u);
  ASSERT_EQ(result->logprobs.size(), tokens.size());
  // Asking for logprobs changes no token.
  auto plain = client_->Generate(Greedy(kPrompt, 6));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->output_ids, tokens);
  EXPECT_TRUE(plain->logprobs.empty());

  absl::StatusOr<reference::NaiveDsa> model = reference::NaiveDsa::Load(kTinyModel);
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<int32_t> ids = kPrompt;
  ids.insert(ids.end(), tokens.begin(), tokens.end() - 1);
  absl::StatusOr<reference::NaiveDsaResult> forward = model->Forward(ids);
  ASSERT_TRUE(forward.ok()) << forward.status();
  ASSERT_EQ(forward->first_near_tie_row(), forward->seq_len);
  for (size_t i = 0; i < tokens.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "token " << i << (i == 0 ? " (sampled by the prefill worker)" : ""));
    const double* row = forward->row(static_cast<int32_t>(kPrompt.size() + i - 1));
    double max = row[0], sum = 0;
    for (int32_t v = 0; v < forward->vocab_size; ++v) max = std::max(max, row[v]);
    for (int32_t v = 0; v < forward->vocab_size; ++v) sum += std::exp(row[v] - max);
    const auto want = [&](int32_t v) { return row[v] - max - std::log(sum); };
    const client::TokenLogprobs& got = result->logprobs[i];
    EXPECT_EQ(got.token_id, tokens[i]);
    EXPECT_NEAR(got.logprob, want(tokens[i]), kLogprobTolerance);
    ASSERT_EQ(got.top_logprobs.size(), 3u);
    EXPECT_EQ(got.top_logprobs[0].token_id, tokens[i]);  // greedy: the most likely token
    for (const client::TokenLogprob& top : got.top_logprobs) {
      EXPECT_NEAR(top.logprob, want(top.token_id), kLogprobTolerance);
    }
    EXPECT_GE(got.top_logprobs[0].logprob, got.top_logprobs[1].logprob);
    EXPECT_GE(got.top_logprobs[1].logprob, got.top_logprobs[2].logprob);
  }
}

TEST_F(ChoicesLogprobsTest, AbortEndsEveryChoiceAndFreesTheirKv) {
  client::GenerateRequest request = Greedy(kPrompt, 2000);
  request.sampling.n = 2;
  client::GenerateStream stream = client_->Stream(request);
  std::vector<int> tokens(2, 0);
  std::vector<std::optional<client::FinalInfo>> finals(2);
  bool aborted = false;
  for (;;) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) break;
    const client::GenerateChunk& c = **chunk;
    ASSERT_GE(c.index, 0);
    ASSERT_LT(c.index, 2);
    tokens[c.index] += static_cast<int>(c.token_ids.size());
    if (c.final) finals[c.index] = c.final;
    // Both choices are decoding: abort the request by its id.
    if (!aborted && tokens[0] > 0 && tokens[1] > 0) {
      auto found = client_->Abort(stream.request_id());
      ASSERT_TRUE(found.ok()) << found.status();
      EXPECT_TRUE(*found);
      aborted = true;
    }
  }
  ASSERT_TRUE(aborted);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(finals[i].has_value()) << "choice " << i;
    EXPECT_EQ(finals[i]->finish_reason, client::FinishReason::kAbort) << "choice " << i;
    EXPECT_LT(tokens[i], 2000);
  }
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10)));
}

TEST_F(ChoicesLogprobsTest, ClientCancelOfTwoChoicesFreesTheirKv) {
  client::GenerateRequest request = Greedy(kPrompt, 2000);
  request.sampling.n = 2;
  client::GenerateStream stream = client_->Stream(request);
  std::vector<int> tokens(2, 0);
  while (tokens[0] == 0 || tokens[1] == 0) {
    auto chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    ASSERT_TRUE(chunk->has_value());
    ASSERT_FALSE((*chunk)->final.has_value());
    tokens[(*chunk)->index] += static_cast<int>((*chunk)->token_ids.size());
  }
  stream.Cancel();
  for (;;) {
    auto chunk = stream.Next();
    if (!chunk.ok()) {
      EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled) << chunk.status();
      break;
    }
    ASSERT_TRUE(chunk->has_value()) << "a cancelled stream ends with CANCELLED";
  }
  EXPECT_TRUE(DecodeKvAllFree(absl::Seconds(10)));
}

}  // namespace
}  // namespace indexcache::e2e
