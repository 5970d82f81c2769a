// A prefill worker and a decode worker in one process, driven the way the router drives them: Decode
// admits, Prefill pushes the handoff to the admitted address, the Decode stream carries the tokens.
// Truths: transformers' greedy continuation of the golden prompt (expected.json), and the handoff's
// bytes per payload kind from moe_freq2's config.json (5 layers F F S F S; latent rows of
// kv_lora_rank 32 + qk_rope_head_dim 8 floats, index-key rows of index_head_dim 16 floats).
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/decode_worker.h"
#include "services/prefill_worker/prefill_worker.h"
#include "tests/e2e/e2e_common.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";
constexpr uint64_t kLayers = 5, kFullLayers = 3, kLatentFloats = 32 + 8, kIndexKeyFloats = 16;

EngineOptions TestEngineOptions() {
  EngineOptions options;
  options.model_dir = kModel;
  options.num_threads = 2;
  options.block_size = 16;
  options.max_batch_tokens = 8;  // the prompt prefills, and ships, in several chunks
  options.kv_cache_bytes = size_t{8} << 20;
  return options;
}

class PrefillDecodeTest : public ::testing::TestWithParam<v1::HandoffTransport> {
 protected:
  void SetUp() override {
    DecodeWorkerOptions decode;
    decode.engine = TestEngineOptions();
    decode.server.cluster_token = e2e::ProcessClusterToken().token;
    auto decode_worker = DecodeWorker::Create(decode);
    ASSERT_TRUE(decode_worker.ok()) << decode_worker.status();
    decode_worker_ = *std::move(decode_worker);
    auto decode_address = decode_worker_->Start();
    ASSERT_TRUE(decode_address.ok()) << decode_address.status();
    decode_ = v1::DecodeWorker::NewStub(e2e::WorkerChannel(*decode_address));

    PrefillWorkerOptions prefill;
    prefill.engine = TestEngineOptions();
    prefill.server.cluster_token = e2e::ProcessClusterToken().token;
    auto prefill_worker = PrefillWorker::Create(prefill);
    ASSERT_TRUE(prefill_worker.ok()) << prefill_worker.status();
    prefill_worker_ = *std::move(prefill_worker);
    auto prefill_address = prefill_worker_->Start();
    ASSERT_TRUE(prefill_address.ok()) << prefill_address.status();
    prefill_ = v1::PrefillWorker::NewStub(e2e::WorkerChannel(*prefill_address));
  }

  std::unique_ptr<PrefillWorker> prefill_worker_;
  std::unique_ptr<DecodeWorker> decode_worker_;
  std::unique_ptr<v1::PrefillWorker::Stub> prefill_;
  std::unique_ptr<v1::DecodeWorker::Stub> decode_;
};

TEST_P(PrefillDecodeTest, GoldenPromptDecodesToTransformersGreedyOutput) {
  std::ifstream in(kModel + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(text.str())["greedy"];
  const auto prompt = golden["prompt_ids"].get<std::vector<int32_t>>();
  const auto want = golden["output_ids"].get<std::vector<int32_t>>();

  v1::SamplingParameters sampling;
  sampling.set_temperature(0);
  sampling.set_max_new_tokens(static_cast<int32_t>(want.size()));
  sampling.set_ignore_eos(true);

  grpc::ClientContext decode_context;
  decode_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::DecodeRequest decode_request;
  decode_request.set_request_id("r1");
  decode_request.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  *decode_request.mutable_sampling() = sampling;
  decode_request.set_transport(GetParam());
  auto stream = decode_->Decode(&decode_context, decode_request);
  v1::DecodeResponse message;
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_admitted());

  grpc::ClientContext prefill_context;
  prefill_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::PrefillRequest prefill_request;
  prefill_request.set_request_id("r1");
  prefill_request.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  *prefill_request.mutable_sampling() = sampling;
  prefill_request.set_transport(GetParam());
  prefill_request.set_handoff_address(message.admitted().handoff_address());
  // The Prefill stream: the first token, then `done` after the decode worker's ack.
  auto prefill_stream = prefill_->Prefill(&prefill_context, prefill_request);
  v1::PrefillResponse first;
  ASSERT_TRUE(prefill_stream->Read(&first));
  ASSERT_TRUE(first.has_first_token());
  EXPECT_EQ(first.first_token().token_id(), want[0]);
  v1::PrefillResponse last;
  ASSERT_TRUE(prefill_stream->Read(&last));
  ASSERT_TRUE(last.has_done());
  grpc::Status prefill_status = prefill_stream->Finish();
  ASSERT_TRUE(prefill_status.ok()) << prefill_status.error_message();
  const v1::PrefillDone& prefilled = last.done();
  EXPECT_EQ(prefilled.first_token(), want[0]);
  // Every layer's latent rows cross; index keys only for the Full layers.
  const uint64_t positions = prompt.size();
  EXPECT_EQ(prefilled.handoff().latent_bytes(), positions * kLayers * kLatentFloats * sizeof(float));
  EXPECT_EQ(prefilled.handoff().index_key_bytes(), positions * kFullLayers * kIndexKeyFloats * sizeof(float));

  std::vector<int32_t> tokens;
  std::optional<v1::FinalInfo> final;
  while (stream->Read(&message)) {
    tokens.insert(tokens.end(), message.token_ids().begin(), message.token_ids().end());
    if (message.has_final()) final = message.final();
  }
  grpc::Status decode_status = stream->Finish();
  ASSERT_TRUE(decode_status.ok()) << decode_status.error_message();
  EXPECT_EQ(tokens, want);
  ASSERT_TRUE(final.has_value());
  EXPECT_EQ(final->finish_reason(), v1::LENGTH);
  const v1::WorkerLoad load = decode_worker_->Load();
  EXPECT_EQ(load.free_kv_blocks(), load.total_kv_blocks());
}

INSTANTIATE_TEST_SUITE_P(BothTransports, PrefillDecodeTest,
                         ::testing::Values(v1::HANDOFF_TRANSPORT_GRPC, v1::HANDOFF_TRANSPORT_TCP),
                         [](const auto& info) { return info.param == v1::HANDOFF_TRANSPORT_GRPC ? "Grpc" : "Tcp"; });

}  // namespace
}  // namespace indexcache
