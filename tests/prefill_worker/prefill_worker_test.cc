// The prefill worker in-process on the moe_freq2 golden model (5 layers, pattern F F S F S), pushing
// its handoff to a fake decode worker that records every chunk. The rows, probes and first token it
// ships are compared with an in-process Engine running the same prompt; sizes with the dimensions
// read from the model's config.json.
#include "services/prefill_worker/prefill_worker.h"

#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/engine/engine.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/nccl/nccl_handoff.h"
#include "common/model/model_config.h"
#include "common/model/prefill_cost.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "services/common/worker_metrics.h"
#include "services/common/worker_server.h"
#include "services/prefill_worker/prefill_service.h"
#include "tests/handoff/fake_sink.h"
#include "tests/handoff/loopback_channel.h"
#include "tests/prefill_worker/test_peers.h"
#include "tests/service_common/worker_peers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::FakeDecode;
using ::indexcache::testing::FakeRouter;
using ::indexcache::testing::HealthStatus;
using ::indexcache::testing::RecordingSink;
using ::indexcache::testing::ServeOnLoopback;
using ::testing::HasSubstr;

// moe_freq2/config.json: kv_lora_rank 32 + qk_rope_head_dim 8; index_head_dim 16; indexer_types
// full, full, shared, full, shared; vocab_size 256; max_position_embeddings 512.
constexpr int kLatentDim = 32 + 8;
constexpr int kIndexKeyDim = 16;
constexpr int kLayers = 5;
constexpr bool kFull[kLayers] = {true, true, false, true, false};
constexpr int kFullLayers = 3;
constexpr int kVocab = 256;

EngineOptions TestEngineOptions() {
  EngineOptions o;
  o.model_dir = INDEXCACHE_TEST_DATA "/goldens/moe_freq2";
  o.num_threads = 2;
  o.kv_cache_bytes = size_t{4} << 20;
  o.block_size = 16;
  o.max_batch_tokens = 16;  // a 45-token prompt runs in three chunks
  return o;
}

// In-vocabulary ids above the special ones (bos 0, eos 1); `salt` varies the sequence.
std::vector<int32_t> Prompt(int n, int salt = 0) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(2 + (i * 37 + 11 + salt * 101) % (kVocab - 2));
  return ids;
}

// The same prompt through an in-process Engine: rows of every (layer, kind), probes, first token.
struct Reference {
  std::string fingerprint;
  int32_t first_token = -1;
  std::vector<IndexerProbe> probes;
  std::map<std::pair<int32_t, KvRowKind>, std::vector<float>> rows;  // [prompt, width] (f32: the CPU's cache)
};

Reference RunInProcess(const std::vector<int32_t>& prompt) {
  Reference ref;
  auto engine = Engine::Create(TestEngineOptions());
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return ref;
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = 8;
  auto id = (*engine)->SubmitPrefill(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  while (ref.first_token < 0) {
    auto events = (*engine)->Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return ref;
    for (const TokenEvent& e : *events) {
      if (e.finish == RequestFinish::kPrefillDone) ref.first_token = e.token;
    }
  }
  const int32_t n = static_cast<int32_t>(prompt.size());
  absl::StatusOr<KvSegment> segment = (*engine)->ExportSegment(*id, 0, n);
  EXPECT_TRUE(segment.ok()) << segment.status();
  if (!segment.ok()) return ref;
  EXPECT_TRUE(segment->Wait().ok());
  EXPECT_EQ(segment->slices().size(), size_t(kLayers + kFullLayers));
  for (const KvSlice& slice : segment->slices()) {
    const std::string_view bytes = segment->bytes(slice);
    std::vector<float>& rows = ref.rows[{slice.layer, slice.kind}];
    rows.resize(bytes.size() / sizeof(float));
    std::memcpy(rows.data(), bytes.data(), bytes.size());
  }
  ref.probes = *(*engine)->TakeProbes(*id);
  ref.fingerprint = (*engine)->model_fingerprint();
  return ref;
}

// Checks one recorded handoff against the in-process engine on the same prompt: sequence numbers and
// checksums, the header, rows covering [0, prompt) exactly once per (layer, kind) and equal to the
// engine's, no index keys of Shared layers, the trailer's first token and probes, and the byte counts.
void ExpectHandoffOf(const std::vector<int32_t>& prompt, const std::string& request_id,
                     const std::vector<v1::HandoffChunk>& chunks, const v1::PrefillDone& response) {
  const Reference ref = RunInProcess(prompt);
  const int32_t n = static_cast<int32_t>(prompt.size());
  ASSERT_GE(chunks.size(), 3u);
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].request_id(), request_id);
    EXPECT_EQ(chunks[i].sequence(), i);
    EXPECT_TRUE(VerifyChunkChecksum(chunks[i]).ok()) << "chunk " << i;
  }

  ASSERT_TRUE(chunks.front().has_header());
  const v1::HandoffHeader& header = chunks.front().header();
  EXPECT_EQ(header.model_fingerprint(), ref.fingerprint);
  EXPECT_FALSE(header.model_fingerprint().empty());
  EXPECT_EQ(header.index_pattern(), "FFSFS");
  EXPECT_EQ(header.prompt_tokens(), n);
  EXPECT_EQ(header.latent_dim(), kLatentDim);
  EXPECT_EQ(header.index_key_dim(), kIndexKeyDim);
  EXPECT_EQ(header.dtype(), "f32");

  // Every (layer, kind) covers [0, n) exactly once, with the in-process engine's rows.
  std::map<std::pair<int32_t, KvRowKind>, std::vector<int>> covered;
  uint64_t latent_bytes = 0, index_key_bytes = 0;
  for (size_t i = 1; i + 1 < chunks.size(); ++i) {
    ASSERT_TRUE(chunks[i].has_rows()) << "chunk " << i;
    const v1::KvRows& rows = chunks[i].rows();
    ASSERT_TRUE(rows.kind() == v1::LATENT || rows.kind() == v1::INDEX_KEY);
    const KvRowKind kind = rows.kind() == v1::LATENT ? KvRowKind::kLatent : KvRowKind::kIndexKey;
    ASSERT_GE(rows.layer(), 0);
    ASSERT_LT(rows.layer(), kLayers);
    if (kind == KvRowKind::kIndexKey) {
      EXPECT_TRUE(kFull[rows.layer()]) << "index keys of Shared layer " << rows.layer() << " crossed";
    }
    const int width = kind == KvRowKind::kLatent ? kLatentDim : kIndexKeyDim;
    ASSERT_EQ(rows.data().size(), size_t(rows.num_tokens()) * width * sizeof(float));
    (kind == KvRowKind::kLatent ? latent_bytes : index_key_bytes) += rows.data().size();
    std::vector<int>& seen = covered[{rows.layer(), kind}];
    seen.resize(n);
    const auto it = ref.rows.find({rows.layer(), kind});
    ASSERT_NE(it, ref.rows.end());
    const float* got = reinterpret_cast<const float*>(rows.data().data());
    for (int32_t t = 0; t < rows.num_tokens(); ++t) {
      const int32_t pos = rows.begin_position() + t;
      ASSERT_GE(pos, 0);
      ASSERT_LT(pos, n);
      ++seen[pos];
      for (int c = 0; c < width; ++c) {
        const float want = it->second[size_t(pos) * width + c];
        ASSERT_NEAR(got[size_t(t) * width + c], want, 1e-5f + 1e-5f * std::fabs(want))
            << "layer " << rows.layer() << " position " << pos << " column " << c;
      }
    }
  }
  EXPECT_EQ(covered.size(), size_t(kLayers + kFullLayers));
  for (const auto& [key, seen] : covered) {
    for (int32_t pos = 0; pos < n; ++pos) EXPECT_EQ(seen[pos], 1) << "layer " << key.first << " position " << pos;
  }

  ASSERT_TRUE(chunks.back().has_trailer());
  const v1::HandoffTrailer& trailer = chunks.back().trailer();
  EXPECT_EQ(trailer.first_token(), ref.first_token);
  EXPECT_EQ(response.first_token(), ref.first_token);
  ASSERT_EQ(trailer.selections_size(), kFullLayers);
  ASSERT_EQ(ref.probes.size(), size_t(kFullLayers));
  for (int i = 0; i < kFullLayers; ++i) {
    const v1::LayerSelection& s = trailer.selections(i);
    EXPECT_EQ(s.layer(), ref.probes[i].layer);
    EXPECT_TRUE(kFull[s.layer()]);
    EXPECT_THAT(s.topk(), ::testing::ElementsAreArray(ref.probes[i].topk));
    EXPECT_EQ(size_t(s.query_size()), ref.probes[i].query.size());
    EXPECT_EQ(size_t(s.head_weights_size()), ref.probes[i].head_weights.size());
  }

  // Bytes by payload kind: every layer's latent rows, Full layers' index keys only.
  EXPECT_EQ(latent_bytes, uint64_t(n) * kLatentDim * sizeof(float) * kLayers);
  EXPECT_EQ(index_key_bytes, uint64_t(n) * kIndexKeyDim * sizeof(float) * kFullLayers);
  EXPECT_EQ(response.handoff().latent_bytes(), latent_bytes);
  EXPECT_EQ(response.handoff().index_key_bytes(), index_key_bytes);
  EXPECT_GT(response.handoff().metadata_bytes(), 0u);
  EXPECT_EQ(response.handoff().chunks(), chunks.size());
  EXPECT_GT(response.prefill_seconds(), 0.0);
  EXPECT_GT(response.handoff_seconds(), 0.0);

}

class PrefillWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override { decode_server_ = ServeOnLoopback(&decode_, &decode_address_); }

  void TearDown() override {
    decode_.Release();
    worker_.reset();
    decode_server_->Shutdown();
  }

  static PrefillWorkerOptions Options() {
    PrefillWorkerOptions o;
    o.engine = TestEngineOptions();
    o.server.cluster_token = ::indexcache::testing::TestClusterToken();
    return o;
  }

  void StartWorker(const PrefillWorkerOptions& options = Options()) {
    auto worker = PrefillWorker::Create(options);
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    auto address = worker_->Start();
    ASSERT_TRUE(address.ok()) << address.status();
    stub_ = v1::PrefillWorker::NewStub(InternalChannel(*address, ::indexcache::testing::TestClusterToken()));
  }

  v1::PrefillRequest Request(const std::string& id, const std::vector<int32_t>& prompt) {
    v1::PrefillRequest r;
    r.set_request_id(id);
    r.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
    r.mutable_sampling()->set_temperature(0.0f);
    r.mutable_sampling()->set_max_new_tokens(8);
    r.set_transport(v1::HANDOFF_TRANSPORT_GRPC);
    r.set_handoff_address(decode_address_);
    return r;
  }

  // The Prefill stream, checked: the first token (its text as the engine detokenizes it) and then
  // `done`, which names the same token; `response` is `done`.
  grpc::Status Prefill(const v1::PrefillRequest& request, v1::PrefillDone* response,
                       std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + timeout);
    std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> reader = stub_->Prefill(&context, request);
    std::vector<v1::PrefillResponse> messages;
    for (v1::PrefillResponse message; reader->Read(&message);) messages.push_back(message);
    const grpc::Status status = reader->Finish();
    if (!status.ok()) return status;
    EXPECT_EQ(messages.size(), 2u);
    if (messages.size() != 2) return grpc::Status(grpc::StatusCode::INTERNAL, "not two messages");
    EXPECT_TRUE(messages[0].has_first_token());
    EXPECT_TRUE(messages[1].has_done());
    *response = messages[1].done();
    EXPECT_EQ(messages[0].first_token().token_id(), response->first_token());
    return status;
  }

  // Prefill on its own thread (for calls the test interrupts).
  std::future<grpc::Status> PrefillAsync(const v1::PrefillRequest& request,
                                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    return std::async(std::launch::async, [this, request, timeout] {
      v1::PrefillDone response;
      return Prefill(request, &response, timeout);
    });
  }

  v1::WorkerLoad Load() {
    grpc::ClientContext context;
    v1::WorkerLoad load;
    EXPECT_TRUE(stub_->GetLoad(&context, v1::LoadRequest(), &load).ok());
    return load;
  }

  // The worker's KV blocks all come back once a failed call has returned.
  void ExpectAllKvFree() {
    const v1::WorkerLoad load = Load();
    EXPECT_GT(load.total_kv_blocks(), 0);
    EXPECT_EQ(load.free_kv_blocks(), load.total_kv_blocks());
    EXPECT_EQ(load.queued_requests(), 0);
    EXPECT_EQ(load.queued_prompt_tokens(), 0);
    EXPECT_EQ(load.queued_prefill_flops(), 0);
  }

  FakeDecode decode_;
  std::string decode_address_;
  std::unique_ptr<grpc::Server> decode_server_;
  std::unique_ptr<PrefillWorker> worker_;
  std::unique_ptr<v1::PrefillWorker::Stub> stub_;
};

// Issue 13: a direct Prefill with any handoff_address made the worker send a prompt's KV there. With
// the internal plane authenticated only the router calls Prefill: without the token every method of
// PrefillWorker is refused, so KV goes only where the router said.
TEST_F(PrefillWorkerTest, EveryInternalCallWithoutTheTokenIsUnauthenticated) {
  StartWorker();
  const ClusterToken wrong = *ClusterToken::FromSecret(std::string(64, 'e'));
  for (const ClusterToken& token : {ClusterToken(), wrong}) {
    const auto statuses =
        ::indexcache::testing::CallEveryMethod(worker_->address(), v1::PrefillWorker::service_full_name(), token);
    ASSERT_FALSE(statuses.empty());
    for (const auto& [method, status] : statuses) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method;
    }
  }
}

TEST(PrefillWorkerAuthTest, AWorkerWithoutATokenStartsOnlyWhenToldToBeInsecure) {
  PrefillWorkerOptions options;
  EXPECT_EQ(ValidateWorkerServerOptions(options.server).code(), absl::StatusCode::kInvalidArgument);
  options.server.insecure_internal_plane = true;
  EXPECT_TRUE(ValidateWorkerServerOptions(options.server).ok());
}

TEST_F(PrefillWorkerTest, HandsOffWhatTheInProcessEngineComputes) {
  StartWorker();
  const std::vector<int32_t> prompt = Prompt(45);
  const int32_t n = static_cast<int32_t>(prompt.size());
  v1::PrefillDone response;
  const grpc::Status status = Prefill(Request("req-1", prompt), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(decode_.WaitForStreams(1));
  EXPECT_TRUE(decode_.streams()[0].closed_by_sender);
  ExpectHandoffOf(prompt, "req-1", decode_.streams()[0].chunks, response);

  // IndexCache counters: each prompt token ran the indexer on the 3 Full layers and skipped it on the
  // 2 Shared ones, whose index keys (16 floats) were never stored.
  ExpectAllKvFree();
  const v1::WorkerLoad load = Load();
  EXPECT_EQ(load.role(), v1::PREFILL);
  EXPECT_EQ(load.indexer_runs(), uint64_t(n) * kFullLayers);
  EXPECT_EQ(load.indexer_skips(), uint64_t(n) * (kLayers - kFullLayers));
  EXPECT_EQ(load.index_key_bytes_not_stored(), uint64_t(n) * (kLayers - kFullLayers) * kIndexKeyDim * sizeof(float));
  EXPECT_EQ(load.handoffs_rejected(), 0u);
}

// The prefix cache on a prefill worker: the same prompt again computes only its last, partial block
// and still hands off every position, with the in-process engine's rows (the decode worker has none).
TEST_F(PrefillWorkerTest, ACachedPromptIsHandedOffInFullAndNotComputedAgain) {
  StartWorker();
  const std::vector<int32_t> prompt = Prompt(45);
  for (int i = 0; i < 2; ++i) {
    const std::string id = "req-" + std::to_string(i);
    v1::PrefillDone response;
    const grpc::Status status = Prefill(Request(id, prompt), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_TRUE(decode_.WaitForStreams(i + 1));
    ExpectHandoffOf(prompt, id, decode_.streams()[i].chunks, response);
  }
  ExpectAllKvFree();
  // Blocks of 16: the second time, positions [0, 32) came from the cache.
  EXPECT_EQ(Load().indexer_runs(), uint64_t(45 + 45 - 32) * kFullLayers);
}

TEST_F(PrefillWorkerTest, HandsOffOverTheTcpDataPlane) {
  StartWorker();
  RecordingSink sink;
  // A decode worker's data plane: it challenges the prefill worker for the cluster token.
  auto tcp = TcpHandoffServer::Start("127.0.0.1", 0, &sink, {.token = ::indexcache::testing::TestClusterToken()});
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  const std::vector<int32_t> prompt = Prompt(37, 1);
  v1::PrefillRequest request = Request("tcp-1", prompt);
  request.set_transport(v1::HANDOFF_TRANSPORT_TCP);
  request.set_handoff_address((*tcp)->address());
  v1::PrefillDone response;
  const grpc::Status status = Prefill(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(sink.completed(), 1);
  ExpectHandoffOf(prompt, "tcp-1", sink.chunks(), response);
  ExpectAllKvFree();
}

TEST_F(PrefillWorkerTest, AnNcclRequestToAWorkerWithoutNcclFailsAndFreesTheKv) {
  StartWorker();  // no --nccl-gpu: its HandoffTransports has gRPC and TCP only
  v1::PrefillRequest request = Request("nccl-1", Prompt(20));
  request.set_transport(v1::HANDOFF_TRANSPORT_NCCL);
  v1::PrefillDone response;
  const grpc::Status status = Prefill(request, &response);
  // The set's FAILED_PRECONDITION, read as a refused handoff (ABORTED), with the hint kept.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("--nccl-gpu"));
  ExpectAllKvFree();
}

// NCCL with the rows on the GPU, over the in-process loopback: the engine stages its rows in device
// memory (the CPU backend's Allocate, host memory standing for the GPU's), the transport sends them
// from there, sealed from their CRC computed on the "GPU", and the decode side lands them in device
// memory and checks them by their CRC. The rows are the in-process engine's, every checksum holds
// over the whole body, and no row went through host staging.
TEST_F(PrefillWorkerTest, HandsOffFromDeviceMemoryOverNccl) {
  auto fabric = std::make_shared<::indexcache::testing::LoopbackFabric>();
  PrefillWorkerOptions options = Options();
  options.nccl_gpu = 0;
  options.nccl_channels = [fabric](int) -> absl::StatusOr<std::unique_ptr<PeerChannelFactory>> {
    return std::make_unique<::indexcache::testing::LoopbackFactory>(fabric);
  };
  options.nccl_rows = RowsMemory::kDevice;
  StartWorker(options);
  ::indexcache::testing::FakeSink sink;
  auto server = NcclHandoffServer::Start("127.0.0.1", 0, &sink,
                                         std::make_unique<::indexcache::testing::LoopbackFactory>(fabric),
                                         {.token = ::indexcache::testing::TestClusterToken(), .rows = RowsMemory::kDevice});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::vector<int32_t> prompt = Prompt(41, 2);
  v1::PrefillRequest request = Request("nccl-device", prompt);
  request.set_transport(v1::HANDOFF_TRANSPORT_NCCL);
  request.set_handoff_address((*server)->address());
  v1::PrefillDone response;
  const grpc::Status status = Prefill(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(sink.WaitForEnd());
  EXPECT_EQ(sink.completed(), std::vector<std::string>{"nccl-device"});
  const std::vector<v1::HandoffChunk> chunks = sink.chunks();
  ExpectHandoffOf(prompt, "nccl-device", chunks, response);
  const int rows_chunks = static_cast<int>(chunks.size()) - 2;  // all but the header and the trailer
  EXPECT_EQ(sink.landed_on_device(), rows_chunks);
  {
    std::lock_guard<std::mutex> lock(fabric->mu);
    EXPECT_EQ(fabric->device_crcs, 2 * rows_chunks) << "each rows chunk checksummed on both GPUs";
  }
  ExpectAllKvFree();
}

TEST_F(PrefillWorkerTest, ConcurrentPrefillsEachHandOffTheirOwnRows) {
  StartWorker();
  constexpr int kRequests = 6;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<v1::PrefillDone> responses(kRequests);
  std::vector<std::future<grpc::Status>> calls;
  for (int i = 0; i < kRequests; ++i) prompts.push_back(Prompt(13 + 11 * i, i + 2));
  for (int i = 0; i < kRequests; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return Prefill(Request(absl::StrCat("c", i), prompts[i]), &responses[i]);
    }));
  }
  for (auto& call : calls) {
    const grpc::Status status = call.get();
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_TRUE(decode_.WaitForStreams(kRequests));
  for (const FakeDecode::Stream& stream : decode_.streams()) {
    ASSERT_FALSE(stream.chunks.empty());
    const std::string& id = stream.chunks[0].request_id();
    const int i = std::stoi(id.substr(1));
    SCOPED_TRACE(id);
    ExpectHandoffOf(prompts[i], id, stream.chunks, responses[i]);
  }
  ExpectAllKvFree();
}

TEST_F(PrefillWorkerTest, ARefusedHandoffFailsWithThePeersReasonAndFreesTheKv) {
  StartWorker();
  struct Case {
    FakeDecode::Refuse when;
    std::string code_prefix;  // the decode worker writes its status as "CODE: message"
    std::string reason;
    grpc::StatusCode code;    // what the caller of Prefill sees
  };
  const std::vector<Case> cases = {
      {FakeDecode::Refuse::kAtHeader, "FAILED_PRECONDITION: ", "model fingerprint mismatch (test)",
       grpc::StatusCode::ABORTED},
      {FakeDecode::Refuse::kAtTrailer, "DATA_LOSS: ", "layer 3's top-k differs (test)", grpc::StatusCode::DATA_LOSS},
      {FakeDecode::Refuse::kAtTrailer, "", "a reason naming no code (test)", grpc::StatusCode::ABORTED},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.reason);
    decode_.RefuseWith(c.when, c.code_prefix + c.reason);
    v1::PrefillDone response;
    const grpc::Status status = Prefill(Request(absl::StrCat("refused-", n++), Prompt(40)), &response);
    EXPECT_EQ(status.error_code(), c.code) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.reason));
    ExpectAllKvFree();
  }
  EXPECT_EQ(Load().handoffs_rejected(), cases.size());
}

TEST_F(PrefillWorkerTest, MalformedRequestsAreInvalidArgument) {
  StartWorker();
  std::vector<std::pair<std::string, v1::PrefillRequest>> cases;
  cases.emplace_back("empty prompt", Request("e", {}));
  cases.emplace_back("out-of-vocabulary id", Request("v", {5, kVocab, 7}));
  cases.emplace_back("negative id", Request("n", {5, -1, 7}));
  cases.emplace_back("prompt past the context", Request("c", Prompt(510)));  // 510 + 8 > 512 positions
  v1::PrefillRequest zero_new = Request("z", Prompt(4));
  zero_new.mutable_sampling()->set_max_new_tokens(0);
  cases.emplace_back("max_new_tokens 0", zero_new);
  v1::PrefillRequest nan = Request("t", Prompt(4));
  nan.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN());
  cases.emplace_back("temperature NaN", nan);
  v1::PrefillRequest negative = Request("m", Prompt(4));
  negative.mutable_sampling()->set_temperature(-0.5f);
  cases.emplace_back("negative temperature", negative);
  cases.emplace_back("no request id", Request("", Prompt(4)));
  for (const auto& [name, request] : cases) {
    v1::PrefillDone response;
    const grpc::Status status = Prefill(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name << ": " << status.error_message();
    EXPECT_FALSE(status.error_message().empty()) << name;
  }
  EXPECT_TRUE(decode_.streams().empty());  // refused before any handoff began
  ExpectAllKvFree();
}

TEST_F(PrefillWorkerTest, AbortStopsAPrefillStuckOnASlowPeerAndFreesTheKv) {
  StartWorker();
  decode_.Hold();
  std::future<grpc::Status> call = PrefillAsync(Request("slow", Prompt(30)));
  ASSERT_TRUE(decode_.WaitForHeaders(1));
  grpc::ClientContext context;
  v1::WorkerAbortRequest abort;
  abort.set_request_id("slow");
  v1::WorkerAbortResponse found;
  ASSERT_TRUE(stub_->Abort(&context, abort, &found).ok());
  EXPECT_TRUE(found.found());
  const grpc::Status status = call.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << status.error_message();
  ExpectAllKvFree();
  ASSERT_TRUE(decode_.WaitForStreams(1));
  EXPECT_FALSE(decode_.streams()[0].closed_by_sender);  // the decode side saw the stream break
  EXPECT_EQ(Load().handoffs_rejected(), 0u);
}

TEST_F(PrefillWorkerTest, APassedDeadlineFreesTheKv) {
  StartWorker();
  decode_.Hold();
  const grpc::Status status = PrefillAsync(Request("late", Prompt(30)), std::chrono::milliseconds(500)).get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The worker notices within its watchdog period, then frees the request.
  for (int i = 0; i < 500 && Load().queued_requests() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ExpectAllKvFree();
}

TEST_F(PrefillWorkerTest, QueuedPromptTokensAreBounded) {
  PrefillWorkerOptions options = Options();
  options.max_queued_prompt_tokens = 60;
  StartWorker(options);
  decode_.Hold();
  std::future<grpc::Status> first = PrefillAsync(Request("first", Prompt(40)));
  ASSERT_TRUE(decode_.WaitForHeaders(1));
  const v1::WorkerLoad load = Load();
  EXPECT_EQ(load.queued_requests(), 1);
  EXPECT_EQ(load.queued_prompt_tokens(), 40);
  // And their modelled work, what the router balances by (common/model/prefill_cost.h).
  const ModelConfig config = *LoadModelConfig(TestEngineOptions().model_dir);
  EXPECT_DOUBLE_EQ(load.queued_prefill_flops(), PrefillWorkOf(config, 40).total());
  v1::PrefillDone response;
  const grpc::Status second = Prefill(Request("second", Prompt(40)), &response);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << second.error_message();
  decode_.Release();
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(Prefill(Request("third", Prompt(40)), &response).ok());
}

TEST_F(PrefillWorkerTest, DrainRefusesNewWorkAndFinishesWhatIsInFlight) {
  StartWorker();
  EXPECT_EQ(HealthStatus(worker_->address()), 1);  // SERVING
  decode_.Hold();
  std::future<grpc::Status> in_flight = PrefillAsync(Request("in-flight", Prompt(30)));
  ASSERT_TRUE(decode_.WaitForHeaders(1));
  std::thread drain([&] { worker_->Drain(); });
  int health = 1;
  for (int i = 0; i < 500 && health == 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    health = HealthStatus(worker_->address());
  }
  EXPECT_EQ(health, 2);  // NOT_SERVING
  v1::PrefillDone response;
  EXPECT_EQ(Prefill(Request("new", Prompt(10)), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  decode_.Release();
  EXPECT_TRUE(in_flight.get().ok());
  drain.join();
  worker_->Wait();  // returns: the server stopped
}

TEST_F(PrefillWorkerTest, RegistersWithTheRouterAndHeartbeats) {
  FakeRouter router;
  std::string router_address;
  std::unique_ptr<grpc::Server> router_server = ServeOnLoopback(&router, &router_address);
  PrefillWorkerOptions options = Options();
  options.server.router_address = router_address;
  options.server.worker_id = "prefill-test";
  options.server.heartbeat_interval = absl::Milliseconds(20);
  StartWorker(options);
  ASSERT_TRUE(router.WaitFor(1, 2));
  const v1::RegisterRequest self = router.registrations()[0];
  EXPECT_EQ(self.worker_id(), "prefill-test");
  EXPECT_EQ(self.role(), v1::PREFILL);
  EXPECT_EQ(self.address(), worker_->address());
  EXPECT_EQ(self.index_pattern(), "FFSFS");
  EXPECT_EQ(self.model_fingerprint(), RunInProcess(Prompt(1)).fingerprint);
  const v1::WorkerLoad beat = router.heartbeats()[0];
  EXPECT_EQ(beat.worker_id(), "prefill-test");
  EXPECT_GT(beat.total_kv_blocks(), 0);
  router.Forget();  // the next heartbeat hears known=false: the worker registers again
  ASSERT_TRUE(router.WaitFor(2, 3));
  worker_.reset();
  router_server->Shutdown();
}

TEST_F(PrefillWorkerTest, ServesWhileTheRouterIsUnreachable) {
  PrefillWorkerOptions options = Options();
  options.server.router_address = "127.0.0.1:1";  // nothing listens on port 1
  options.server.heartbeat_interval = absl::Milliseconds(20);
  StartWorker(options);
  v1::PrefillDone response;
  const grpc::Status status = Prefill(Request("alone", Prompt(20)), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Liveness is not workload: while the engine loop is held inside a closure, as a long prefill step
// holds it, heartbeats keep reaching the router and GetLoad answers with the engine's blocks. The
// truth that they waited for nothing: the loop is still held when they arrive (it is released only
// after the checks, so a Load that waited for the loop fails them by the bounded waits, not a hang).
TEST(PrefillWorkerLivenessTest, HeartbeatsAndGetLoadAnswerWhileTheEngineLoopIsHeld) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(TestEngineOptions());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int32_t total_blocks = (*engine)->cache().num_blocks();
  EngineLoop loop(*std::move(engine));
  WorkerMetrics metrics(v1::PREFILL, kFullLayers, kLayers - kFullLayers);
  PrefillService service(loop, PrefillServiceOptions(), metrics);
  FakeRouter router;
  std::string router_address;
  std::unique_ptr<grpc::Server> router_server = ServeOnLoopback(&router, &router_address);
  WorkerServerOptions options;
  options.router_address = router_address;
  options.worker_id = "busy-prefill";
  options.heartbeat_interval = absl::Milliseconds(20);
  WorkerServer server(options);
  WorkerServer::Served served;
  served.role = v1::PREFILL;
  served.service = &service;
  served.lifecycle = &service;
  served.service_name = v1::PrefillWorker::service_full_name();
  const absl::StatusOr<std::string> address = server.Start(std::move(served));
  ASSERT_TRUE(address.ok()) << address.status();
  ASSERT_TRUE(router.WaitFor(1, 1));

  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> held;
  loop.Post([&held, released](Engine&) {
    held.set_value();
    released.wait();
  });
  held.get_future().wait();
  const size_t beats = router.heartbeats().size();
  const bool beats_went_on = router.WaitFor(1, beats + 3);
  auto stub = v1::PrefillWorker::NewStub(InternalChannel(*address, ::indexcache::testing::TestClusterToken()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WorkerLoad load;
  const grpc::Status status = stub->GetLoad(&context, v1::LoadRequest(), &load);
  const int health = HealthStatus(*address);
  release.set_value();

  EXPECT_TRUE(beats_went_on) << "no heartbeat while the engine loop was busy";
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(load.worker_id(), "busy-prefill");
  EXPECT_EQ(load.total_kv_blocks(), total_blocks);
  EXPECT_EQ(load.free_kv_blocks(), total_blocks);
  EXPECT_EQ(router.heartbeats().back().total_kv_blocks(), total_blocks);
  EXPECT_EQ(health, 1);  // SERVING
  server.Drain();
  router_server->Shutdown();
}

}  // namespace
}  // namespace indexcache
