// The decode worker in-process on the tiny moe_freq2 checkpoint (F F S F S), with the test playing the
// prefill worker on its own Engine: SubmitPrefill, export each step's new rows, probes, trailer.
// Truths: transformers' greedy continuation of the golden prompt (expected.json), an in-process
// Engine's greedy continuation of other prompts, the KV block counts of GetLoad (all free once a
// request ended, however it ended).
#include <chrono>
#include <functional>
#include <optional>
#include <set>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/handoff_transports.h"
#include "common/handoff/nccl/nccl_handoff.h"
#include "common/model/model_config.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/decode_worker.h"
#include "tests/handoff/loopback_channel.h"
#include "tests/service_common/worker_peers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::FakeRouter;
using ::indexcache::testing::ServeOnLoopback;
using ::testing::HasSubstr;

const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";

// gRPC and TCP handoffs proving the tests' cluster token, as a prefill worker's do.
const HandoffTransports& TestHandoffs() {
  static const HandoffTransports* const transports =
      HandoffTransports::WithDefaults(::indexcache::testing::TestClusterToken()).release();
  return *transports;
}

EngineOptions TestEngineOptions() {
  EngineOptions options;
  options.model_dir = kModel;
  options.num_threads = 2;
  options.block_size = 16;
  options.max_batch_tokens = 8;  // prompts prefill in several chunks: rows ship in several pieces
  options.kv_cache_bytes = size_t{8} << 20;
  return options;
}

// A worker on TestEngineOptions whose internal plane takes the tests' cluster token.
DecodeWorkerOptions WorkerOptions() {
  DecodeWorkerOptions options;
  options.engine = TestEngineOptions();
  options.server.cluster_token = ::indexcache::testing::TestClusterToken();
  return options;
}

// WorkerOptions for a worker that registers with the router at `router_address`, heartbeating every
// 20 ms so tests see its reports quickly.
DecodeWorkerOptions RegisteringOptions(const std::string& router_address) {
  DecodeWorkerOptions options = WorkerOptions();
  options.server.router_address = router_address;
  options.server.heartbeat_interval = absl::Milliseconds(20);
  return options;
}

v1::SamplingParameters Greedy(int32_t max_new_tokens) {
  v1::SamplingParameters s;
  s.set_temperature(0);
  s.set_max_new_tokens(max_new_tokens);
  s.set_ignore_eos(true);
  return s;
}

SamplingParams GreedyParams(int32_t max_new_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

std::vector<int32_t> Prompt(int32_t n, int32_t seed) {
  std::vector<int32_t> ids(n);
  for (int32_t i = 0; i < n; ++i) ids[i] = (seed * 31 + i * 17 + i * i) % 256;
  return ids;
}

// The prefill side of a handoff, run on `engine`: every chunk, sealed, in order.
std::vector<v1::HandoffChunk> PrefillHandoff(Engine& engine, const std::string& request_id,
                                             const std::vector<int32_t>& prompt, int32_t max_new_tokens) {
  std::vector<v1::HandoffChunk> chunks;
  auto next = [&]() -> v1::HandoffChunk& {
    v1::HandoffChunk& chunk = chunks.emplace_back();
    chunk.set_request_id(request_id);
    chunk.set_sequence(static_cast<uint32_t>(chunks.size() - 1));
    return chunk;
  };
  const ModelConfig& config = engine.config();
  v1::HandoffHeader* header = next().mutable_header();
  header->set_model_fingerprint(engine.model_fingerprint());
  header->set_index_pattern(FormatIndexPattern(config.indexer_types));
  header->set_prompt_tokens(static_cast<int32_t>(prompt.size()));
  header->set_latent_dim(config.kv_lora_rank + config.qk_rope_head_dim);
  header->set_index_key_dim(config.index_head_dim);
  header->set_dtype("f32");

  absl::StatusOr<RequestId> id = engine.SubmitPrefill(prompt, GreedyParams(max_new_tokens));
  EXPECT_TRUE(id.ok()) << id.status();
  int32_t exported = 0, first_token = -1;
  while (first_token < 0) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return {};
    const int32_t cached = *engine.CachedTokens(*id);
    if (cached > exported) {
      absl::StatusOr<KvSegment> segment = engine.ExportSegment(*id, exported, cached);
      EXPECT_TRUE(segment.ok()) << segment.status();
      if (!segment.ok()) return {};
      EXPECT_TRUE(segment->Wait().ok());
      for (const KvSlice& slice : segment->slices()) {
        v1::KvRows* r = next().mutable_rows();
        r->set_layer(slice.layer);
        r->set_kind(slice.kind == KvRowKind::kLatent ? v1::LATENT : v1::INDEX_KEY);
        r->set_begin_position(exported);
        r->set_num_tokens(cached - exported);
        r->set_data(std::string(segment->bytes(slice)));
      }
    }
    exported = cached;
    for (const TokenEvent& e : *events) {
      if (e.request == *id && e.finish == RequestFinish::kPrefillDone) first_token = e.token;
    }
  }
  v1::HandoffTrailer* trailer = next().mutable_trailer();
  trailer->set_first_token(first_token);
  absl::StatusOr<std::vector<IndexerProbe>> probes = engine.TakeProbes(*id);
  EXPECT_TRUE(probes.ok()) << probes.status();
  for (const IndexerProbe& probe : *probes) {
    v1::LayerSelection* s = trailer->add_selections();
    s->set_layer(probe.layer);
    s->mutable_query()->Add(probe.query.begin(), probe.query.end());
    s->mutable_head_weights()->Add(probe.head_weights.begin(), probe.head_weights.end());
    s->mutable_topk()->Add(probe.topk.begin(), probe.topk.end());
  }
  engine.Release(*id);
  for (v1::HandoffChunk& chunk : chunks) SealChunk(chunk);
  return chunks;
}

// Greedy continuation by one in-process Engine.
std::vector<int32_t> LocalGreedy(Engine& engine, const std::vector<int32_t>& prompt, int32_t max_new_tokens) {
  absl::StatusOr<RequestId> id = engine.Submit(prompt, GreedyParams(max_new_tokens));
  EXPECT_TRUE(id.ok()) << id.status();
  std::vector<int32_t> tokens;
  for (bool done = false; !done;) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      if (e.request != *id) continue;
      if (e.token >= 0) tokens.push_back(e.token);
      done = e.finish != RequestFinish::kNone;
    }
  }
  return tokens;
}

// One Decode call, read message by message.
struct DecodeCall {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::DecodeResponse>> reader;
  v1::DecodeAdmitted admitted;
  std::vector<int32_t> tokens;
  std::optional<v1::FinalInfo> final;

  // Reads the `admitted` message; false when the stream ended instead.
  bool ReadAdmitted() {
    v1::DecodeResponse message;
    if (!reader->Read(&message)) return false;
    EXPECT_TRUE(message.has_admitted());
    admitted = message.admitted();
    return true;
  }
  // Reads up to `n` more tokens (all, by default) and returns the call's status once it ended.
  std::optional<grpc::Status> Read(size_t n = SIZE_MAX) {
    v1::DecodeResponse message;
    while (tokens.size() < n && reader->Read(&message)) {
      tokens.insert(tokens.end(), message.token_ids().begin(), message.token_ids().end());
      if (message.has_final()) final = message.final();
    }
    if (tokens.size() >= n && !final) return std::nullopt;
    return reader->Finish();
  }
};

class DecodeWorkerTest : public ::testing::TestWithParam<v1::HandoffTransport> {
 protected:
  static void SetUpTestSuite() {
    auto engine = Engine::Create(TestEngineOptions());
    ASSERT_TRUE(engine.ok()) << engine.status();
    prefill_ = engine->release();
  }
  static void TearDownTestSuite() {
    delete prefill_;
    prefill_ = nullptr;
  }

  void SetUp() override { StartWorker(WorkerOptions()); }

  void StartWorker(const DecodeWorkerOptions& options) {
    auto worker = DecodeWorker::Create(options);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    auto address = worker_->Start();
    ASSERT_TRUE(address.ok()) << address.status();
    stub_ = v1::DecodeWorker::NewStub(InternalChannel(*address, ::indexcache::testing::TestClusterToken()));
  }

  std::unique_ptr<DecodeCall> StartDecode(const std::string& id, const std::vector<int32_t>& prompt,
                                          const v1::SamplingParameters& sampling,
                                          absl::Duration deadline = absl::Seconds(60)) {
    auto call = std::make_unique<DecodeCall>();
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    v1::DecodeRequest request;
    request.set_request_id(id);
    request.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
    *request.mutable_sampling() = sampling;
    request.set_transport(GetParam());
    call->reader = stub_->Decode(&call->context, request);
    return call;
  }

  // Pushes `chunks`; the decode worker's verdict (a failed Send's status, or Finish's ack).
  absl::Status Push(const std::string& address, const std::vector<v1::HandoffChunk>& chunks) {
    auto sender = TestHandoffs().Connect(GetParam(), address, absl::Seconds(5));
    if (!sender.ok()) return sender.status();
    for (const v1::HandoffChunk& chunk : chunks) {
      if (absl::Status sent = (*sender)->Send(chunk); !sent.ok()) return sent;
    }
    absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
    return ack.ok() ? AckStatus(*ack) : ack.status();
  }

  v1::WorkerLoad Load() {
    grpc::ClientContext context;
    v1::WorkerLoad load;
    EXPECT_TRUE(stub_->GetLoad(&context, v1::LoadRequest(), &load).ok());
    return load;
  }

  // Waits (up to 10 s) until no request holds KV blocks on the worker.
  void ExpectAllBlocksFree() {
    v1::WorkerLoad load;
    for (int i = 0; i < 200; ++i) {
      load = Load();
      if (load.free_kv_blocks() == load.total_kv_blocks() && load.running_sequences() == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(load.free_kv_blocks(), load.total_kv_blocks());
    EXPECT_EQ(load.running_sequences(), 0);
  }

  static Engine* prefill_;
  std::unique_ptr<DecodeWorker> worker_;
  std::unique_ptr<v1::DecodeWorker::Stub> stub_;
};

Engine* DecodeWorkerTest::prefill_ = nullptr;

// Issue 13: Decode calls that hold KV blocks, Abort of another's request, forged KV pushed — none
// without the cluster token. Every method of DecodeWorker and KvHandoff is refused, and no block is held.
TEST_P(DecodeWorkerTest, EveryInternalCallWithoutTheTokenIsUnauthenticated) {
  const ClusterToken wrong = *ClusterToken::FromSecret(std::string(64, 'e'));
  for (const ClusterToken& token : {ClusterToken(), wrong}) {
    for (const char* service : {v1::DecodeWorker::service_full_name(), v1::KvHandoff::service_full_name()}) {
      const auto statuses = ::indexcache::testing::CallEveryMethod(worker_->address(), service, token);
      ASSERT_FALSE(statuses.empty()) << service;
      for (const auto& [method, status] : statuses) {
        EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << service << "/" << method;
      }
    }
  }
  const v1::WorkerLoad load = worker_->Load();
  EXPECT_EQ(load.free_kv_blocks(), load.total_kv_blocks());
}

TEST_P(DecodeWorkerTest, GoldenPromptDecodesToTransformersGreedyOutput) {
  std::ifstream in(kModel + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(text.str())["greedy"];
  const auto prompt = golden["prompt_ids"].get<std::vector<int32_t>>();
  const auto want = golden["output_ids"].get<std::vector<int32_t>>();
  const int32_t n = static_cast<int32_t>(want.size());

  std::unique_ptr<DecodeCall> call = StartDecode("golden", prompt, Greedy(n));
  ASSERT_TRUE(call->ReadAdmitted());
  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "golden", prompt, n)).ok());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(call->tokens, want);
  ASSERT_TRUE(call->final.has_value());
  EXPECT_EQ(call->final->finish_reason(), v1::LENGTH);
  EXPECT_EQ(call->final->generated_tokens(), n);
  EXPECT_EQ(call->final->prompt_tokens(), static_cast<int32_t>(prompt.size()));
  EXPECT_EQ(call->final->index_pattern(), "FFSFS");
  EXPECT_GT(call->final->timings().handoff_seconds(), 0.0);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, LongerPromptsMatchTheInProcessEngine) {
  for (int32_t length : {1, 37, 70}) {  // one token; several prefill chunks and cache blocks
    const std::vector<int32_t> prompt = Prompt(length, length);
    const std::string id = "long-" + std::to_string(length);
    const std::vector<int32_t> want = LocalGreedy(*prefill_, prompt, 12);
    std::unique_ptr<DecodeCall> call = StartDecode(id, prompt, Greedy(12));
    ASSERT_TRUE(call->ReadAdmitted());
    ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, id, prompt, 12)).ok());
    std::optional<grpc::Status> status = call->Read();
    ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
    EXPECT_EQ(call->tokens, want) << "prompt of " << length;
  }
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, RowsImportedInBatchesThenChunkByChunkMatchTheInProcessEngine) {
  // Batches of an eighth of the prompt's rows until the last quarter, then chunk by chunk: both ways
  // of importing, beside the transfer and at the trailer, on one request.
  const std::vector<int32_t> prompt = Prompt(70, 5);
  const ModelConfig& c = prefill_->config();
  size_t row_bytes_per_token = 0;  // f32 rows on the CPU
  for (IndexerType t : c.indexer_types) {
    row_bytes_per_token += (c.latent_cache_dim() + (t == IndexerType::kFull ? c.index_head_dim : 0)) * sizeof(float);
  }
  const size_t rows_bytes = row_bytes_per_token * prompt.size();
  DecodeWorkerOptions batched = WorkerOptions();
  batched.import.batch_bytes = rows_bytes / 8;
  batched.import.eager_tail_bytes = rows_bytes / 4;
  worker_.reset();
  StartWorker(batched);
  const std::vector<int32_t> want = LocalGreedy(*prefill_, prompt, 12);
  std::unique_ptr<DecodeCall> call = StartDecode("batched", prompt, Greedy(12));
  ASSERT_TRUE(call->ReadAdmitted());
  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "batched", prompt, 12)).ok());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(call->tokens, want);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, OneTokenRequestEndsWithThePrefillWorkersToken) {
  const std::vector<int32_t> prompt = Prompt(10, 2);
  const std::vector<int32_t> want = LocalGreedy(*prefill_, prompt, 1);
  std::unique_ptr<DecodeCall> call = StartDecode("one", prompt, Greedy(1));
  ASSERT_TRUE(call->ReadAdmitted());
  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "one", prompt, 1)).ok());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(call->tokens, want);
  ASSERT_TRUE(call->final.has_value());
  EXPECT_EQ(call->final->finish_reason(), v1::LENGTH);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, CorruptedChunkIsRejectedAndItsBlocksFreed) {
  const std::vector<int32_t> prompt = Prompt(20, 3);
  std::unique_ptr<DecodeCall> call = StartDecode("corrupt", prompt, Greedy(4));
  ASSERT_TRUE(call->ReadAdmitted());
  EXPECT_LT(Load().free_kv_blocks(), Load().total_kv_blocks());  // reserved for the prompt
  std::vector<v1::HandoffChunk> chunks = PrefillHandoff(*prefill_, "corrupt", prompt, 4);
  (*chunks[3].mutable_rows()->mutable_data())[5] ^= 0x40;  // after sealing
  absl::Status verdict = Push(call->admitted.handoff_address(), chunks);
  EXPECT_EQ(verdict.code(), absl::StatusCode::kDataLoss) << verdict;
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(status->error_message(), HasSubstr("corrupt"));
  EXPECT_TRUE(call->tokens.empty());
  ExpectAllBlocksFree();
  EXPECT_EQ(Load().handoffs_rejected(), 1u);
}

TEST_P(DecodeWorkerTest, HeaderOfAnotherModelOrPatternIsRefused) {
  const std::vector<int32_t> prompt = Prompt(9, 4);
  struct Case {
    std::string field;
    std::function<void(v1::HandoffHeader&)> edit;
  };
  const std::vector<Case> cases = {
      {"fingerprint", [](v1::HandoffHeader& h) { h.set_model_fingerprint("another-model"); }},
      {"pattern", [](v1::HandoffHeader& h) { h.set_index_pattern("FSSSS"); }},
      {"row widths", [](v1::HandoffHeader& h) { h.set_latent_dim(h.latent_dim() + 1); }},
  };
  for (const Case& c : cases) {
    const std::string id = "header-" + c.field;
    std::unique_ptr<DecodeCall> call = StartDecode(id, prompt, Greedy(4));
    ASSERT_TRUE(call->ReadAdmitted());
    std::vector<v1::HandoffChunk> chunks = PrefillHandoff(*prefill_, id, prompt, 4);
    c.edit(*chunks[0].mutable_header());
    SealChunk(chunks[0]);
    absl::Status verdict = Push(call->admitted.handoff_address(), chunks);
    EXPECT_EQ(verdict.code(), absl::StatusCode::kFailedPrecondition) << verdict;
    EXPECT_THAT(verdict.message(), HasSubstr(c.field));
    std::optional<grpc::Status> status = call->Read();
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->error_code(), grpc::StatusCode::FAILED_PRECONDITION) << c.field;
    ExpectAllBlocksFree();
  }
}

TEST_P(DecodeWorkerTest, WrongProbeSelectionIsRefused) {
  // The probes are checked together (one wait on the device): a wrong first or last one is found,
  // and the message names its layer.
  const std::vector<int32_t> prompt = Prompt(40, 5);  // > index_topk, so the top-k is a real choice
  for (const bool last : {false, true}) {
    const std::string id = last ? "probe-last" : "probe-first";
    std::unique_ptr<DecodeCall> call = StartDecode(id, prompt, Greedy(4));
    ASSERT_TRUE(call->ReadAdmitted());
    std::vector<v1::HandoffChunk> chunks = PrefillHandoff(*prefill_, id, prompt, 4);
    v1::HandoffTrailer& trailer = *chunks.back().mutable_trailer();
    ASSERT_GE(trailer.selections_size(), 2);
    v1::LayerSelection* s = trailer.mutable_selections(last ? trailer.selections_size() - 1 : 0);
    std::set<int32_t> selected(s->topk().begin(), s->topk().end());
    for (int32_t pos = 0; pos < 40; ++pos) {
      if (!selected.contains(pos)) {
        s->set_topk(0, pos);  // swap one selected key for an unselected one
        break;
      }
    }
    SealChunk(chunks.back());
    absl::Status verdict = Push(call->admitted.handoff_address(), chunks);
    EXPECT_EQ(verdict.code(), absl::StatusCode::kDataLoss) << verdict;
    EXPECT_THAT(verdict.message(), HasSubstr(absl::StrCat("layer ", s->layer(), "'s top-k")));
    ASSERT_TRUE(call->Read().has_value());
    ExpectAllBlocksFree();
  }
}

TEST_P(DecodeWorkerTest, AbortBeforeTheHandoffEndsWithAbortAndFreesBlocks) {
  std::unique_ptr<DecodeCall> call = StartDecode("abort-early", Prompt(30, 6), Greedy(8));
  ASSERT_TRUE(call->ReadAdmitted());
  grpc::ClientContext context;
  v1::WorkerAbortRequest request;
  request.set_request_id("abort-early");
  v1::WorkerAbortResponse response;
  ASSERT_TRUE(stub_->Abort(&context, request, &response).ok());
  EXPECT_TRUE(response.found());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  ASSERT_TRUE(call->final.has_value());
  EXPECT_EQ(call->final->finish_reason(), v1::ABORT);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, CancelledDecodeMidStreamFreesBlocks) {
  const std::vector<int32_t> prompt = Prompt(25, 7);
  std::unique_ptr<DecodeCall> call = StartDecode("cancel", prompt, Greedy(400));
  ASSERT_TRUE(call->ReadAdmitted());
  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "cancel", prompt, 400)).ok());
  ASSERT_FALSE(call->Read(3).has_value());  // three tokens in, still generating
  call->context.TryCancel();
  call->Read();
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, MalformedRequestsAreRefused) {
  std::unique_ptr<DecodeCall> no_id = StartDecode("", Prompt(4, 1), Greedy(4));
  EXPECT_EQ(no_id->Read()->error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  std::unique_ptr<DecodeCall> empty = StartDecode("empty", {}, Greedy(4));
  EXPECT_EQ(empty->Read()->error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SamplingParameters bad = Greedy(4);
  bad.set_temperature(-1);
  std::unique_ptr<DecodeCall> negative = StartDecode("negative", Prompt(4, 1), bad);
  EXPECT_EQ(negative->Read()->error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, NcclRequestToAWorkerWithoutAnNcclGpuIsFailedPrecondition) {
  grpc::ClientContext context;
  v1::DecodeRequest request;
  request.set_request_id("nccl");
  const std::vector<int32_t> prompt = Prompt(4, 1);
  request.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  *request.mutable_sampling() = Greedy(4);
  request.set_transport(v1::HANDOFF_TRANSPORT_NCCL);
  auto reader = stub_->Decode(&context, request);
  v1::DecodeResponse response;
  EXPECT_FALSE(reader->Read(&response));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("--nccl-gpu"));
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, AdmissionShortOfBlocksAnswersResourceExhaustedAtOnce) {
  // A cache of 6 blocks of 16 tokens: A holds 3 (41 tokens), B needs 4 (61). Requests wait in the
  // router's queue, not here: B is refused at once, and admitted once A's blocks are back.
  DecodeWorkerOptions small = WorkerOptions();
  small.engine.kv_cache_bytes = 6 * prefill_->cache().bytes_per_block();
  worker_.reset();
  StartWorker(small);
  ASSERT_EQ(Load().total_kv_blocks(), 6);
  EXPECT_EQ(Load().kv_block_size(), 16);  // what the router sizes its admission by

  std::unique_ptr<DecodeCall> a = StartDecode("A", Prompt(40, 8), Greedy(40));
  ASSERT_TRUE(a->ReadAdmitted());
  const absl::Time start = absl::Now();
  std::unique_ptr<DecodeCall> short_now = StartDecode("short", Prompt(60, 9), Greedy(4), absl::Seconds(30));
  std::optional<grpc::Status> refused = short_now->Read();
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused->error_message(), HasSubstr("blocks needed"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // One that never fits the cache says so.
  std::unique_ptr<DecodeCall> huge = StartDecode("huge", Prompt(60, 9), Greedy(60));
  std::optional<grpc::Status> never = huge->Read();
  ASSERT_TRUE(never.has_value());
  EXPECT_EQ(never->error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(never->error_message(), HasSubstr("does not fit"));

  a->context.TryCancel();  // A's blocks go back; B gets in
  a->Read();
  ExpectAllBlocksFree();
  std::unique_ptr<DecodeCall> b = StartDecode("B", Prompt(60, 9), Greedy(4));
  ASSERT_TRUE(b->ReadAdmitted());
  ASSERT_TRUE(Push(b->admitted.handoff_address(), PrefillHandoff(*prefill_, "B", Prompt(60, 9), 4)).ok());
  std::optional<grpc::Status> status = b->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(b->tokens.size(), 4u);
  ExpectAllBlocksFree();
}

TEST_P(DecodeWorkerTest, DrainFinishesAdmittedRequestsAndRefusesNewOnes) {
  const std::vector<int32_t> prompt = Prompt(12, 10);
  std::unique_ptr<DecodeCall> call = StartDecode("drain", prompt, Greedy(6));
  ASSERT_TRUE(call->ReadAdmitted());
  std::thread drainer([&] { worker_->Drain(); });
  for (int i = 0; i < 100 && !Load().draining(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::unique_ptr<DecodeCall> refused = StartDecode("refused", prompt, Greedy(6));
  EXPECT_EQ(refused->Read()->error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "drain", prompt, 6)).ok());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(call->tokens.size(), 6u);
  drainer.join();
}

// A router that forgets a worker while it drains (it dropped the worker on NOT_SERVING) does not get
// it back: the worker takes no new work, so registering again would only churn the router's books.
TEST_P(DecodeWorkerTest, AWorkerForgottenWhileDrainingDoesNotRegisterAgain) {
  FakeRouter registry;
  std::string router_address;
  std::unique_ptr<grpc::Server> router = ServeOnLoopback(&registry, &router_address);
  ASSERT_NE(router, nullptr);
  StartWorker(RegisteringOptions(router_address));
  ASSERT_TRUE(registry.WaitFor(1, 1));

  // An admitted request waiting for its handoff keeps the drain going.
  const std::vector<int32_t> prompt = Prompt(12, 12);
  std::unique_ptr<DecodeCall> call = StartDecode("held", prompt, Greedy(4));
  ASSERT_TRUE(call->ReadAdmitted());
  std::thread drainer([&] { worker_->Drain(); });
  auto draining_reported = [&] {
    const std::vector<v1::WorkerLoad> loads = registry.heartbeats();
    return !loads.empty() && loads.back().draining();
  };
  for (int i = 0; i < 200 && !draining_reported(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(draining_reported());
  registry.Forget();
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // 20 heartbeat intervals
  EXPECT_EQ(registry.registrations().size(), 1u) << "a draining worker registered again";

  ASSERT_TRUE(Push(call->admitted.handoff_address(), PrefillHandoff(*prefill_, "held", prompt, 4)).ok());
  std::optional<grpc::Status> status = call->Read();
  EXPECT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  drainer.join();
  router->Shutdown();
}

TEST_P(DecodeWorkerTest, HandoffBrokenMidStreamFreesBlocks) {
  const std::vector<int32_t> prompt = Prompt(30, 11);
  std::unique_ptr<DecodeCall> call = StartDecode("broken", prompt, Greedy(4), absl::Seconds(20));
  ASSERT_TRUE(call->ReadAdmitted());
  const std::vector<v1::HandoffChunk> chunks = PrefillHandoff(*prefill_, "broken", prompt, 4);
  auto sender = TestHandoffs().Connect(GetParam(), call->admitted.handoff_address(), absl::Seconds(5));
  ASSERT_TRUE(sender.ok()) << sender.status();
  for (size_t i = 0; i < 4; ++i) ASSERT_TRUE((*sender)->Send(chunks[i]).ok());
  // Let the worker read them: a gRPC cancel discards unread messages, and a stream that dies before
  // naming its request can only be dropped by the router's cancel or the handoff timeout.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  (*sender)->Cancel();  // the prefill worker died mid-transfer
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status.has_value());
  EXPECT_FALSE(status->ok());
  EXPECT_THAT(status->error_message(), HasSubstr("handoff"));
  ExpectAllBlocksFree();
  EXPECT_EQ(Load().handoffs_rejected(), 1u);
}

TEST_P(DecodeWorkerTest, HandoffThatNeverArrivesTimesOut) {
  DecodeWorkerOptions options = WorkerOptions();
  options.handoff_timeout = absl::Milliseconds(300);
  worker_.reset();
  StartWorker(options);
  std::unique_ptr<DecodeCall> call = StartDecode("never", Prompt(10, 12), Greedy(4));
  ASSERT_TRUE(call->ReadAdmitted());
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status->error_message(), HasSubstr("no complete handoff"));
  ExpectAllBlocksFree();
}

// NCCL with the rows on the GPU, over the in-process loopback (the CPU backend's device memory is
// host memory standing for the GPU's): rows sent from "device" memory land in the worker's device
// receive area, are checked by their CRC computed on the "GPU", are imported into the pools from
// there, and the decode equals the in-process engine's.
class DecodeWorkerNcclDeviceRowsTest : public DecodeWorkerTest {
 protected:
  void SetUp() override {
    DecodeWorkerOptions options = WorkerOptions();
    options.nccl_gpu = 0;
    options.nccl_channels = [fabric = fabric_](int) -> absl::StatusOr<std::unique_ptr<PeerChannelFactory>> {
      return std::make_unique<::indexcache::testing::LoopbackFactory>(fabric);
    };
    options.nccl_rows = RowsMemory::kDevice;
    StartWorker(options);
  }

  std::shared_ptr<::indexcache::testing::LoopbackFabric> fabric_ =
      std::make_shared<::indexcache::testing::LoopbackFabric>();
};

TEST_P(DecodeWorkerNcclDeviceRowsTest, RowsReceivedIntoDeviceMemoryDecodeAsTheInProcessEngine) {
  const std::vector<int32_t> prompt = Prompt(53, 3);
  const std::vector<int32_t> want = LocalGreedy(*prefill_, prompt, 10);
  std::unique_ptr<DecodeCall> call = StartDecode("nccl-device", prompt, Greedy(10));
  ASSERT_TRUE(call->ReadAdmitted());
  NcclHandoffClient client(std::make_unique<::indexcache::testing::LoopbackFactory>(fabric_),
                           {.token = ::indexcache::testing::TestClusterToken(), .rows = RowsMemory::kDevice});
  auto sender = client.Connect(call->admitted.handoff_address(), absl::Seconds(5));
  ASSERT_TRUE(sender.ok()) << sender.status();
  int rows_chunks = 0;
  for (v1::HandoffChunk& chunk : PrefillHandoff(*prefill_, "nccl-device", prompt, 10)) {
    if (!chunk.has_rows()) {
      ASSERT_TRUE((*sender)->Send(chunk).ok());
      continue;
    }
    const std::string rows = std::move(*chunk.mutable_rows()->mutable_data());
    chunk.mutable_rows()->clear_data();
    chunk.clear_checksum();  // sealed by the transport from the rows' CRC
    ASSERT_TRUE((*sender)->SendDeviceRows(chunk, rows.data(), rows.size()).ok());
    ++rows_chunks;
  }
  absl::StatusOr<v1::HandoffAck> ack = (*sender)->Finish();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->accepted()) << ack->error();
  std::optional<grpc::Status> status = call->Read();
  ASSERT_TRUE(status && status->ok()) << (status ? status->error_message() : "");
  EXPECT_EQ(call->tokens, want);
  {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    EXPECT_EQ(fabric_->device_crcs, 2 * rows_chunks) << "each rows chunk checksummed on both GPUs";
  }
  ExpectAllBlocksFree();
}

INSTANTIATE_TEST_SUITE_P(Nccl, DecodeWorkerNcclDeviceRowsTest, ::testing::Values(v1::HANDOFF_TRANSPORT_NCCL),
                         [](const auto&) { return "Nccl"; });

INSTANTIATE_TEST_SUITE_P(BothTransports, DecodeWorkerTest,
                         ::testing::Values(v1::HANDOFF_TRANSPORT_GRPC, v1::HANDOFF_TRANSPORT_TCP),
                         [](const auto& info) { return info.param == v1::HANDOFF_TRANSPORT_GRPC ? "Grpc" : "Tcp"; });

TEST(DecodeWorkerRegistration, RegistersHeartbeatsAndRegistersAgainWhenForgotten) {
  FakeRouter registry;
  std::string router_address;
  std::unique_ptr<grpc::Server> router = ServeOnLoopback(&registry, &router_address);
  ASSERT_NE(router, nullptr);

  DecodeWorkerOptions options = RegisteringOptions(router_address);
  options.server.worker_id = "decode-under-test";
  auto worker = DecodeWorker::Create(options);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto address = (*worker)->Start();
  ASSERT_TRUE(address.ok()) << address.status();

  ASSERT_TRUE(registry.WaitFor(1, 2));
  const v1::RegisterRequest self = registry.registrations()[0];
  EXPECT_EQ(self.worker_id(), "decode-under-test");
  EXPECT_EQ(self.role(), v1::DECODE);
  EXPECT_EQ(self.address(), *address);
  EXPECT_EQ(self.handoff_tcp_address(), (*worker)->tcp_address());
  EXPECT_EQ(self.index_pattern(), "FFSFS");
  auto engine = Engine::Create(TestEngineOptions());
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ(self.model_fingerprint(), (*engine)->model_fingerprint());
  const v1::WorkerLoad load = registry.heartbeats().back();
  EXPECT_EQ(load.worker_id(), "decode-under-test");
  EXPECT_EQ(load.role(), v1::DECODE);
  EXPECT_EQ(load.total_kv_blocks(), (*engine)->cache().num_blocks());
  EXPECT_EQ(load.free_kv_blocks(), load.total_kv_blocks());

  registry.Forget();  // the router restarted
  EXPECT_TRUE(registry.WaitFor(2, 0));
  worker->reset();
  router->Shutdown();
}

TEST(DecodeWorkerTcpAdvertise, PrefillWorkersAndTheRouterAreToldTheAdvertisedAddress) {
  FakeRouter registry;
  std::string router_address;
  std::unique_ptr<grpc::Server> router = ServeOnLoopback(&registry, &router_address);
  DecodeWorkerOptions options = WorkerOptions();
  options.server.router_address = router_address;
  options.tcp_listen_address = "0.0.0.0:0";
  options.tcp_advertise_address = "192.0.2.10:50054";  // as a pod IP behind NAT would be
  auto worker = DecodeWorker::Create(options);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto address = (*worker)->Start();
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ((*worker)->tcp_address(), "192.0.2.10:50054");

  auto stub = v1::DecodeWorker::NewStub(InternalChannel(*address, ::indexcache::testing::TestClusterToken()));
  grpc::ClientContext context;
  v1::DecodeRequest request;
  request.set_request_id("advertised");
  const std::vector<int32_t> prompt = Prompt(8, 13);
  request.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  *request.mutable_sampling() = Greedy(2);
  request.set_transport(v1::HANDOFF_TRANSPORT_TCP);
  auto reader = stub->Decode(&context, request);
  v1::DecodeResponse admitted;
  ASSERT_TRUE(reader->Read(&admitted));
  EXPECT_EQ(admitted.admitted().handoff_address(), "192.0.2.10:50054");
  context.TryCancel();
  reader->Finish();

  ASSERT_TRUE(registry.WaitFor(1, 0));
  EXPECT_EQ(registry.registrations()[0].handoff_tcp_address(), "192.0.2.10:50054");
  worker->reset();
  router->Shutdown();
}

TEST(DecodeWorkerTcpAdvertise, AnAddressPrefillWorkersCannotDialIsRefused) {
  for (const std::string bad : {"decode-0.example:50054", "10.0.0.5", "10.0.0.5:0", "[fd00::5:50054"}) {
    DecodeWorkerOptions options = WorkerOptions();
    options.tcp_advertise_address = bad;
    auto worker = DecodeWorker::Create(options);
    EXPECT_EQ(worker.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(worker.status().message(), HasSubstr("--tcp-advertise")) << bad;
  }
  DecodeWorkerOptions ipv6 = WorkerOptions();
  ipv6.tcp_advertise_address = "[fd00::5]:50054";
  EXPECT_TRUE(DecodeWorker::Create(ipv6).ok());
  DecodeWorkerOptions no_data_plane = WorkerOptions();
  no_data_plane.tcp_listen_address.clear();
  no_data_plane.tcp_advertise_address = "10.0.0.5:50054";
  auto worker = DecodeWorker::Create(no_data_plane);
  EXPECT_EQ(worker.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(worker.status().message(), HasSubstr("--tcp-listen"));
}

}  // namespace
}  // namespace indexcache
