// The router against fake workers (tests/router/fake_workers.h): routing, backpressure, validation,
// deadlines, cancellation, retries and failures, as the client sees them.
#include "services/router/router.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "gmock/gmock.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "indexcache/v1/generate.grpc.pb.h"
#include "services/common/health_client.h"
#include "tests/router/fake_workers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::DecodeScript;
using ::indexcache::testing::FakeDecodeWorker;
using ::indexcache::testing::FakeLog;
using ::indexcache::testing::FakePrefillWorker;
using ::indexcache::testing::PrefillScript;
using ::indexcache::testing::WaitFor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

RouterOptions OptionsFor(const std::vector<const FakePrefillWorker*>& prefill,
                         const std::vector<const FakeDecodeWorker*>& decode) {
  RouterOptions o;
  o.model_dir = kModelDir;
  o.cluster_token = ::indexcache::testing::TestClusterToken();
  for (const auto* p : prefill) o.prefill_workers.push_back(p->address());
  for (const auto* d : decode) o.decode_workers.push_back(d->address());
  o.health_check_interval = absl::Milliseconds(100);
  return o;
}

// Everything a client saw of one Generate stream.
struct Result {
  grpc::Status status;
  std::vector<v1::GenerateResponse> messages;
  std::vector<int32_t> tokens;
  std::optional<v1::FinalInfo> final;
};

class Client {
 public:
  explicit Client(const std::string& address)
      : channel_(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        stub_(v1::IndexCache::NewStub(channel_)) {}

  // Reads the whole stream. `after_tokens(n, context)` runs after each chunk, with the tokens so far.
  Result Generate(const v1::GenerateRequest& request, std::optional<absl::Duration> timeout = std::nullopt,
                  const std::function<void(int, grpc::ClientContext&)>& after_tokens = nullptr) {
    grpc::ClientContext context;
    if (timeout) context.set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
    Result result;
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
      result.messages.push_back(message);
      result.tokens.insert(result.tokens.end(), message.token_ids().begin(), message.token_ids().end());
      if (message.has_final()) result.final = message.final();
      if (after_tokens && message.token_ids_size() > 0) after_tokens(static_cast<int>(result.tokens.size()), context);
    }
    result.status = reader->Finish();
    return result;
  }

  v1::IndexCache::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::IndexCache::Stub> stub_;
};

v1::GenerateRequest IdsRequest(std::vector<int32_t> ids, const std::string& request_id = "") {
  v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  request.set_request_id(request_id);
  return request;
}

TEST(RouterTest, RelaysTheDecodeStreamWithTimingsAndWorkers) {
  FakePrefillWorker prefill({.delay = absl::Milliseconds(20)});
  FakeDecodeWorker decode({.tokens = {21, 22, 23, 24}, .token_delay = absl::Milliseconds(20)});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  const Result r = client.Generate(IdsRequest({1, 2, 3}, "relay-1"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAre(21, 22, 23, 24));
  // The first message is the id alone, sent at admission; every message carries the same id.
  const std::string id = r.messages.front().request_id();
  EXPECT_THAT(id, MatchesRegex("relay-1-[0-9a-f]{32}"));
  EXPECT_EQ(r.messages.front().token_ids_size(), 0);
  for (const v1::GenerateResponse& message : r.messages) EXPECT_EQ(message.request_id(), id);
  EXPECT_THAT(decode.log.Copy(&FakeLog::full_ids), ElementsAre(id));
  ASSERT_TRUE(r.final.has_value());
  EXPECT_TRUE(r.messages.back().has_final());
  EXPECT_EQ(r.final->finish_reason(), v1::LENGTH);
  EXPECT_EQ(r.final->prompt_tokens(), 3);
  EXPECT_EQ(r.final->generated_tokens(), 4);
  EXPECT_EQ(r.final->prefill_worker(), "p0");
  EXPECT_EQ(r.final->decode_worker(), "d0");
  EXPECT_EQ(r.final->timings().prefill_seconds(), 0.25);  // the prefill worker's own numbers
  EXPECT_EQ(r.final->timings().handoff_seconds(), 0.125);
  EXPECT_GT(r.final->timings().first_token_seconds(), 0.0);
  EXPECT_GE(r.final->timings().total_seconds(), r.final->timings().first_token_seconds());
  EXPECT_GE(r.final->timings().queue_seconds(), 0.0);
  // The fake prefill takes 20 ms before the first token; the fake decode sleeps 20 ms before each later one.
  EXPECT_GE(r.final->timings().mean_inter_token_seconds(), 0.018);
  EXPECT_GE(r.final->timings().first_token_seconds(), 0.018);
  EXPECT_EQ(r.final->index_pattern().size(), 8u);  // the bundled model has 8 layers
  // The prefill worker pushed to the handoff address the decode worker admitted the request with,
  // over the configured transport, and both saw the same request and prompt.
  EXPECT_THAT(prefill.log.Copy(&FakeLog::handoff_addresses), ElementsAre("handoff.d0"));
  EXPECT_THAT(prefill.log.Copy(&FakeLog::transports), ElementsAre(v1::HANDOFF_TRANSPORT_GRPC));
  EXPECT_THAT(decode.log.Copy(&FakeLog::requests), ElementsAre("relay-1"));
  EXPECT_THAT(prefill.log.Copy(&FakeLog::prompts), ElementsAre(ElementsAre(1, 2, 3)));
}

TEST(RouterTest, EncodesTextWithTheModelsTokenizer) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  v1::GenerateRequest request;
  request.set_text("The quick brown fox");
  const Result r = Client(*address).Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto tokenizer = BpeTokenizer::FromFile(kModelDir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  EXPECT_THAT(decode.log.Copy(&FakeLog::prompts), ElementsAre((*tokenizer)->Encode("The quick brown fox")));
}

TEST(RouterTest, PicksWorkersByPowerOfTwoChoicesOnLoad) {
  FakeDecodeWorker idle({.worker_id = "idle", .running_sequences = 0});
  FakeDecodeWorker busy({.worker_id = "busy", .running_sequences = 4});
  FakeDecodeWorker busiest({.worker_id = "busiest", .running_sequences = 8});
  FakePrefillWorker short_queue({.worker_id = "short", .queued_prompt_tokens = 0});
  FakePrefillWorker long_queue({.worker_id = "long", .queued_prompt_tokens = 5000});
  Router router(OptionsFor({&short_queue, &long_queue}, {&idle, &busy, &busiest}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  constexpr int kRequests = 90;
  std::map<std::string, int> decode_picks, prefill_picks;
  for (int i = 0; i < kRequests; ++i) {
    const Result r = client.Generate(IdsRequest({5, 6}));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ++decode_picks[r.final->decode_worker()];
    ++prefill_picks[r.final->prefill_worker()];
  }
  // Two distinct draws out of three: the least loaded wins whenever drawn (2/3), the middle one when
  // paired with the busiest (1/3), the busiest never. Round robin would give 30 each; least-loaded
  // would give 90 to "idle". Bounds are about 3 standard deviations.
  EXPECT_EQ(decode_picks["busiest"], 0);
  EXPECT_GT(decode_picks["idle"], 45);
  EXPECT_LT(decode_picks["idle"], 75);
  EXPECT_GT(decode_picks["busy"], 15);
  // With two prefill workers both are always drawn: the shorter queue always wins.
  EXPECT_EQ(prefill_picks["short"], kRequests);
}

TEST(RouterTest, FullQueueAnswersResourceExhausted) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.hold_admission = true});
  RouterOptions options = OptionsFor({&prefill}, {&decode});
  options.max_queued_requests = 1;
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  Result held;
  std::thread first([&] { held = client.Generate(IdsRequest({1}, "held")); });
  ASSERT_TRUE(WaitFor([&] { return !decode.log.Copy(&FakeLog::requests).empty(); }));
  EXPECT_EQ(router.queued_requests(), 1);
  const Result refused = client.Generate(IdsRequest({1}, "refused"));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("queue is full"));
  decode.ReleaseAdmission();
  first.join();
  EXPECT_TRUE(held.status.ok()) << held.status.error_message();
  EXPECT_EQ(router.queued_requests(), 0);
  // Once the queue has room again, requests are admitted.
  EXPECT_TRUE(client.Generate(IdsRequest({1})).status.ok());
}

// `n` requests of `prompt_tokens` tokens and `max_new` new ones, all at once; their results.
std::vector<Result> Burst(const std::string& address, int n, int prompt_tokens, int max_new) {
  std::vector<Result> results(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest request = IdsRequest(std::vector<int32_t>(prompt_tokens, 1 + i));
      request.mutable_sampling()->set_max_new_tokens(max_new);
      results[i] = Client(address).Generate(request, absl::Seconds(30));
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(RouterTest, ABurstPastThePrefillWorkersBoundWaitsInTheQueueAndCompletes) {
  // The worker takes 20 prompt tokens at once (a 16-token prompt leaves no room for a second) and
  // refuses more, as PrefillService does: unqueued, most of the burst would fail.
  FakePrefillWorker prefill({.max_queued_prompt_tokens = 20, .delay = absl::Milliseconds(30)});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const std::vector<Result> results = Burst(*address, 8, 16, 3);
  for (const Result& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens.size(), 3u);
  }
  EXPECT_EQ(prefill.log.Get(&FakeLog::max_running), 1);
  EXPECT_EQ(prefill.log.Copy(&FakeLog::requests).size(), 8u);  // none dispatched only to be refused
  // The later ones waited for the earlier prefills: some queue time shows.
  double longest_queue = 0;
  for (const Result& r : results) longest_queue = std::max(longest_queue, r.final->timings().queue_seconds());
  EXPECT_GE(longest_queue, 0.030 * 4);
  EXPECT_EQ(router.queued_requests(), 0);
}

TEST(RouterTest, ABurstPastTheDecodeWorkersKvBlocksWaitsInTheQueueAndCompletes) {
  // 4 blocks of 16 tokens: a 40-token prompt reserves 3 at admission, so one request runs at a time.
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.kv_block_size = 16, .total_kv_blocks = 4, .token_delay = absl::Milliseconds(10)});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  for (const Result& r : Burst(*address, 6, 40, 3)) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens.size(), 3u);
  }
  EXPECT_EQ(decode.log.Get(&FakeLog::max_running), 1);
  EXPECT_EQ(decode.log.Get(&FakeLog::refused), 0);  // the router's ledger kept them from the full worker
}

TEST(RouterTest, AWorkerThatRefusesForLackOfRoomPutsTheRequestBackInTheQueue) {
  // Its load says it has room, but it answers RESOURCE_EXHAUSTED twice (filled up by other routers).
  FakePrefillWorker prefill({.refuse_first = 2});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1, 2}, "refused-twice"), absl::Seconds(10));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(prefill.log.Get(&FakeLog::refused), 2);
  EXPECT_THAT(prefill.log.Copy(&FakeLog::requests),
              ElementsAre("refused-twice", "refused-twice#retry1", "refused-twice#retry2"));
  // Each refused dispatch gave its decode reservation back.
  EXPECT_TRUE(decode.log.Aborted("refused-twice"));
  EXPECT_TRUE(decode.log.Aborted("refused-twice#retry1"));
}

TEST(RouterTest, ARequestThatCanNeverFitFailsAtOnce) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.kv_block_size = 16, .total_kv_blocks = 4});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  v1::GenerateRequest request = IdsRequest(std::vector<int32_t>(40, 1));
  request.mutable_sampling()->set_max_new_tokens(25);  // 65 tokens: 5 blocks of a 4-block cache
  const absl::Time start = absl::Now();
  const Result r = Client(*address).Generate(request, absl::Seconds(30));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(r.status.error_message(), HasSubstr("can never fit"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("65 tokens"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("64 tokens"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(decode.log.Copy(&FakeLog::requests).empty());
  // One token fewer fits.
  request.mutable_sampling()->set_max_new_tokens(24);
  EXPECT_TRUE(Client(*address).Generate(request, absl::Seconds(30)).status.ok());
}

// A 40-token request with 8 new tokens: 3 of the 4 blocks of the held worker below.
v1::GenerateRequest Queued(int32_t token, const std::string& request_id = "") {
  v1::GenerateRequest request = IdsRequest(std::vector<int32_t>(40, token), request_id);
  request.mutable_sampling()->set_max_new_tokens(8);
  return request;
}

// A router whose one decode worker is held by an endless request, so that the next ones wait.
class HeldDecodeWorker {
 public:
  explicit HeldDecodeWorker(int max_queued_requests = 256)
      : decode_({.kv_block_size = 16, .total_kv_blocks = 4, .endless = true, .token_delay = absl::Milliseconds(5)}),
        router_([&] {
          RouterOptions options = OptionsFor({&prefill_}, {&decode_});
          options.max_queued_requests = max_queued_requests;
          return options;
        }()) {}
  ~HeldDecodeWorker() {
    if (holder_.joinable()) {
      holder_context_.TryCancel();
      holder_.join();
    }
  }

  // Starts the endless request (40 tokens: 3 of the 4 blocks) and waits until it streams.
  std::string Start() {
    auto address = router_.Start();
    EXPECT_TRUE(address.ok()) << address.status();
    holder_ = std::thread([this, a = *address] {
      auto stub = v1::IndexCache::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials()));
      auto reader = stub->Generate(&holder_context_, Queued(1, "holder"));
      v1::GenerateResponse message;
      while (reader->Read(&message)) streaming_ = true;
      reader->Finish();
    });
    EXPECT_TRUE(WaitFor([&] { return streaming_.load(); }));
    return *address;
  }
  Router& router() { return router_; }
  FakeDecodeWorker& decode() { return decode_; }

 private:
  FakePrefillWorker prefill_{{}};
  FakeDecodeWorker decode_;
  Router router_;
  grpc::ClientContext holder_context_;
  std::thread holder_;
  std::atomic<bool> streaming_{false};
};

TEST(RouterTest, ADeadlinePassingWhileWaitingForKvBlocksIsDeadlineExceeded) {
  HeldDecodeWorker held;
  const std::string address = held.Start();
  // (The router's message, which says what the request waited for, races the client's own timer.)
  const Result r = Client(address).Generate(Queued(2, "waits"), absl::Milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(held.decode().log.Copy(&FakeLog::requests), ElementsAre("holder"));  // never dispatched
  EXPECT_TRUE(WaitFor([&] { return held.router().queued_requests() == 0 && held.router().in_flight_requests() == 1; }));
}

TEST(RouterTest, CancelAndAbortWhileQueuedLeaveNothingBehind) {
  HeldDecodeWorker held;
  const std::string address = held.Start();
  Client client(address);

  Result cancelled;
  grpc::ClientContext context;
  std::thread waiter([&] {
    auto reader = client.stub().Generate(&context, Queued(2, "cancel-queued"));
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
    }
    cancelled.status = reader->Finish();
  });
  ASSERT_TRUE(WaitFor([&] { return held.router().queued_requests() == 1; }));
  context.TryCancel();
  waiter.join();
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return held.router().queued_requests() == 0 && held.router().in_flight_requests() == 1; }));

  Result aborted;
  std::promise<std::string> queued_id;
  std::thread abort_waiter([&] {
    grpc::ClientContext generate_context;
    auto reader = client.stub().Generate(&generate_context, Queued(3, "abort-queued"));
    v1::GenerateResponse message;
    bool first = true;
    while (reader->Read(&message)) {
      if (std::exchange(first, false)) queued_id.set_value(message.request_id());  // sent at admission
      if (message.has_final()) aborted.final = message.final();
    }
    if (first) queued_id.set_value("");
    aborted.status = reader->Finish();
  });
  const std::string id = queued_id.get_future().get();
  ASSERT_TRUE(WaitFor([&] { return held.router().queued_requests() == 1; }));
  grpc::ClientContext abort_context;
  v1::AbortRequest abort;
  abort.set_request_id(id);
  v1::AbortResponse response;
  ASSERT_TRUE(client.stub().Abort(&abort_context, abort, &response).ok());
  EXPECT_TRUE(response.found());
  abort_waiter.join();
  ASSERT_TRUE(aborted.status.ok()) << aborted.status.error_message();
  ASSERT_TRUE(aborted.final.has_value());
  EXPECT_EQ(aborted.final->finish_reason(), v1::ABORT);
  EXPECT_EQ(aborted.final->generated_tokens(), 0);
  EXPECT_TRUE(WaitFor([&] { return held.router().queued_requests() == 0 && held.router().in_flight_requests() == 1; }));
  EXPECT_THAT(held.decode().log.Copy(&FakeLog::requests), ElementsAre("holder"));  // neither was dispatched
}

TEST(RouterTest, AFullQueueOfRequestsWaitingForRoomAnswersResourceExhausted) {
  HeldDecodeWorker held(/*max_queued_requests=*/2);
  const std::string address = held.Start();
  std::vector<std::thread> waiters;
  std::atomic<int> deadline_exceeded{0};
  // Deadlines long enough that both waiters are in the queue together even on a loaded machine.
  for (int i = 0; i < 2; ++i) {
    waiters.emplace_back([&, i] {
      const Result r = Client(address).Generate(Queued(2 + i), absl::Seconds(4));
      if (r.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) ++deadline_exceeded;
    });
  }
  const bool both_queued = WaitFor([&] { return held.router().queued_requests() == 2; });
  EXPECT_TRUE(both_queued);
  if (both_queued) {
    const Result refused = Client(address).Generate(Queued(9));
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(refused.status.error_message(), HasSubstr("queue is full"));
  }
  for (std::thread& t : waiters) t.join();  // joined even after a failure, so the test fails, not aborts
  EXPECT_EQ(deadline_exceeded.load(), 2);  // they waited, as long as their deadline allowed
}

TEST(RouterTest, MalformedRequestsGetInvalidArgumentWithAMessage) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto with = [](std::function<void(v1::GenerateRequest&)> edit) {
    v1::GenerateRequest request = IdsRequest({1, 2, 3});
    edit(request);
    return request;
  };
  const std::string one_char = "x";            // 200,000 of them were accepted (issue 13)
  const std::string long_stop(3 << 20, 'x');  // 3 MiB: one such stop string logged 6 MB (issue 13)
  // The bundled model: vocab_size 2048, max_position_embeddings 8192 (its config.json).
  const std::vector<std::pair<v1::GenerateRequest, std::string>> cases = {
      {v1::GenerateRequest(), "no input"},
      {with([](auto& r) { r.set_text(""); }), "prompt is empty"},
      {IdsRequest({}), "prompt is empty"},
      {IdsRequest({1, 2048}), "outside the vocabulary"},
      {IdsRequest({-1}), "outside the vocabulary"},
      {with([](auto& r) { r.mutable_sampling()->set_max_new_tokens(0); }), "max_new_tokens"},
      {with([](auto& r) { r.mutable_sampling()->set_max_new_tokens(-5); }), "max_new_tokens"},
      {with([&](auto& r) { r.mutable_sampling()->set_temperature(nan); }), "temperature"},
      {with([](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }), "temperature"},
      {with([](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }), "top_p"},
      {with([](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }), "top_p"},
      {with([](auto& r) { r.mutable_sampling()->set_top_k(-1); }), "top_k"},
      {with([](auto& r) { r.mutable_sampling()->set_min_p(1.5f); }), "min_p"},
      {with([](auto& r) { r.mutable_sampling()->add_stop_token_ids(5000); }), "stop_token_ids"},
      {IdsRequest(std::vector<int32_t>(8192 - 127, 1)), "context"},  // + the default 128 new tokens
      {IdsRequest({1}, "two\nlines"), "request_id"},  // would forge a log line
      {IdsRequest({1}, std::string(65, 'a')), "request_id"},
      {with([&](auto& r) {
         for (int i = 0; i < 200000; ++i) *r.mutable_sampling()->add_stop() = one_char;
       }),
       "stop strings"},
      {with([&](auto& r) { *r.mutable_sampling()->add_stop() = long_stop; }), "stop[0]"},
  };
  for (const auto& [request, fragment] : cases) {
    const Result r = client.Generate(request);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << fragment;
    EXPECT_THAT(r.status.error_message(), HasSubstr(fragment));
  }
  EXPECT_TRUE(decode.log.Copy(&FakeLog::requests).empty());  // refused at the front door
  // The limits themselves are accepted: 8192 - 128 prompt tokens + 128 new ones fill the context.
  EXPECT_TRUE(client.Generate(IdsRequest(std::vector<int32_t>(8192 - 128, 2047))).status.ok());
  // A message past the router's size limit is refused by gRPC before it is parsed.
  v1::GenerateRequest huge;
  huge.set_text(std::string(RouterOptions().max_request_bytes, 'x'));
  EXPECT_EQ(client.Generate(huge).status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(RouterTest, MalformedProtobufGetsInvalidArgumentWithAMessage) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);
  // Raw bytes on the Generate method, as a client with a broken encoder would send them.
  auto send = [&](const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    const grpc::internal::RpcMethod method("/indexcache.v1.IndexCache/Generate",
                                           grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(client.channel().get(), method, &context,
                                                                      request));
    grpc::ByteBuffer response;
    int messages = 0;
    while (reader->Read(&response)) ++messages;
    return std::make_pair(reader->Finish(), messages);
  };
  const std::string cases[] = {
      std::string("\xff\xff\xff", 3),      // a tag whose varint never ends
      std::string("\x0a\x02\xff\xfe", 4),  // field 1 (text), 2 bytes that are not UTF-8
      std::string("\x0a\x10xy", 4),        // field 1 announcing 16 bytes, holding 2
  };
  for (const std::string& bytes : cases) {
    const auto [status, messages] = send(bytes);
    EXPECT_EQ(messages, 0);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("malformed IndexCache.Generate request"));
    EXPECT_THAT(status.error_message(), HasSubstr("indexcache.v1.GenerateRequest"));
  }
  EXPECT_TRUE(decode.log.Copy(&FakeLog::requests).empty());
  // Well-formed bytes on the same path are served: the id at admission, the tokens, the final message.
  std::string good;
  ASSERT_TRUE(IdsRequest({1}).SerializeToString(&good));
  const auto [status, messages] = send(good);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(messages, 5);  // the fake decode worker's 3 tokens, one a message

  // The unary methods parse their own requests too.
  auto call = [&](const char* path, const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    const grpc::internal::RpcMethod method(path, grpc::internal::RpcMethod::NORMAL_RPC);
    return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(client.channel().get(), method,
                                                                                  &context, request, &response);
  };
  // ModelInfoRequest has no fields: the middle case is an unknown field to it, which parses.
  const std::string broken_framing[] = {cases[0], cases[2]};
  for (const auto& [path, name, type, malformed] :
       {std::tuple{"/indexcache.v1.IndexCache/Abort", "IndexCache.Abort", "indexcache.v1.AbortRequest",
                   std::vector<std::string>(std::begin(cases), std::end(cases))},
        std::tuple{"/indexcache.v1.IndexCache/ModelInfo", "IndexCache.ModelInfo", "indexcache.v1.ModelInfoRequest",
                   std::vector<std::string>(std::begin(broken_framing), std::end(broken_framing))}}) {
    for (const std::string& bytes : malformed) {
      const grpc::Status unary = call(path, bytes);
      EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path << ": " << unary.error_message();
      EXPECT_THAT(unary.error_message(), HasSubstr(absl::StrCat("malformed ", name, " request")));
      EXPECT_THAT(unary.error_message(), HasSubstr(type));
    }
  }
  std::string abort;
  ASSERT_TRUE(v1::AbortRequest().SerializeToString(&abort));
  EXPECT_TRUE(call("/indexcache.v1.IndexCache/Abort", abort).ok());
  EXPECT_TRUE(call("/indexcache.v1.IndexCache/ModelInfo", "").ok()) << "an empty message is a well-formed one";
}

// With --api-key-file, every method of the public gRPC API asks for the key, as the HTTP API does;
// health stays open to probes.
TEST(RouterTest, TheApiKeyGuardsEveryPublicMethod) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({});
  RouterOptions options = OptionsFor({&prefill}, {&decode});
  options.api_key = "open-sesame-42";
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);
  auto stub = v1::IndexCache::NewStub(client.channel());
  auto context = [](grpc::ClientContext& c, const std::string& authorization) {
    c.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!authorization.empty()) c.AddMetadata("authorization", authorization);
  };
  auto calls = [&](const std::string& authorization) {
    std::vector<grpc::Status> statuses;
    {
      grpc::ClientContext c;
      context(c, authorization);
      v1::ModelInfoResponse info;
      statuses.push_back(stub->ModelInfo(&c, v1::ModelInfoRequest(), &info));
    }
    {
      grpc::ClientContext c;
      context(c, authorization);
      v1::AbortRequest abort;
      abort.set_request_id("whatever");
      v1::AbortResponse found;
      statuses.push_back(stub->Abort(&c, abort, &found));
    }
    {
      grpc::ClientContext c;
      context(c, authorization);
      auto reader = stub->Generate(&c, IdsRequest({1}));
      v1::GenerateResponse message;
      while (reader->Read(&message)) {
      }
      statuses.push_back(reader->Finish());
    }
    return statuses;
  };
  for (const std::string authorization : {"", "Bearer wrong", "open-sesame-42", "Bearer open-sesame-4"}) {
    for (const grpc::Status& status : calls(authorization)) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "'" << authorization << "'";
      EXPECT_THAT(status.error_message(), HasSubstr("API key"));
    }
  }
  EXPECT_TRUE(decode.log.Copy(&FakeLog::requests).empty()) << "nothing reached a worker without the key";
  for (const grpc::Status& status : calls("Bearer open-sesame-42")) EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(decode.log.Copy(&FakeLog::requests).size(), 1u);
  EXPECT_TRUE(CheckHealth(client.channel(), absl::Seconds(5)).ok());
}

TEST(RouterTest, ClientDeadlineReachesBothWorkers) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({});
  RouterOptions options = OptionsFor({&prefill}, {&decode});
  options.request_timeout = absl::Seconds(60);
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  const absl::Time client_deadline = absl::Now() + absl::Seconds(7);
  ASSERT_TRUE(client.Generate(IdsRequest({1}), client_deadline - absl::Now()).status.ok());
  // Without a client deadline, the router's default applies.
  const absl::Time default_deadline = absl::Now() + absl::Seconds(60);
  ASSERT_TRUE(client.Generate(IdsRequest({1})).status.ok());
  for (const FakeLog* log : {&prefill.log, &decode.log}) {
    const std::vector<absl::Time> deadlines = log->Copy(&FakeLog::deadlines);
    ASSERT_EQ(deadlines.size(), 2u);
    EXPECT_LT(absl::AbsDuration(deadlines[0] - client_deadline), absl::Milliseconds(500));
    EXPECT_LT(absl::AbsDuration(deadlines[1] - default_deadline), absl::Milliseconds(500));
  }
}

TEST(RouterTest, ADeadlinePassingWhileQueuedFreesTheDecodeWorker) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.hold_admission = true});  // never admits: waits for KV blocks
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}, "too-slow"), absl::Milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitFor([&] { return decode.log.Aborted("too-slow"); }));
  EXPECT_TRUE(WaitFor([&] { return router.in_flight_requests() == 0 && router.queued_requests() == 0; }));
  EXPECT_TRUE(prefill.log.Copy(&FakeLog::requests).empty());  // never got as far as the prefill
}

TEST(RouterTest, ClientCancelAbortsTheRequestOnBothWorkers) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.endless = true, .token_delay = absl::Milliseconds(10)});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  const Result r = client.Generate(IdsRequest({1}, "cancel-me"), std::nullopt,
                                   [](int tokens, grpc::ClientContext& context) {
                                     if (tokens == 3) context.TryCancel();
                                   });
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return decode.log.Aborted("cancel-me") && prefill.log.Aborted("cancel-me"); }));
  EXPECT_TRUE(WaitFor([&] { return router.in_flight_requests() == 0; }));
}

TEST(RouterTest, AbortRpcEndsTheStreamWithAbortAndFreesBothWorkers) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.endless = true, .token_delay = absl::Milliseconds(10)});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);
  Client aborter(*address);

  bool found = false;
  const Result r = client.Generate(IdsRequest({1}, "abort-me"), std::nullopt, [&](int tokens, grpc::ClientContext&) {
    if (tokens != 2) return;
    grpc::ClientContext context;
    v1::AbortRequest request;
    request.set_request_id(decode.log.Copy(&FakeLog::full_ids).at(0));  // the id the router returned
    v1::AbortResponse response;
    ASSERT_TRUE(aborter.stub().Abort(&context, request, &response).ok());
    found = response.found();
  });
  EXPECT_TRUE(found);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->finish_reason(), v1::ABORT);
  EXPECT_GE(r.final->generated_tokens(), 2);
  EXPECT_TRUE(WaitFor([&] { return decode.log.Aborted("abort-me") && prefill.log.Aborted("abort-me"); }));

  grpc::ClientContext context;
  v1::AbortRequest unknown;
  unknown.set_request_id("no-such-request");
  v1::AbortResponse response;
  ASSERT_TRUE(aborter.stub().Abort(&context, unknown, &response).ok());
  EXPECT_FALSE(response.found());
}

// Abort acts only on the id the router returned, which nobody can guess: the label the client chose,
// a well-formed id with other random digits, or ids that differ by a digit find nothing, and the
// victim's stream goes on until its owner aborts it with the exact id.
TEST(RouterTest, AbortNeedsTheExactUnguessableIdTheRouterReturned) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.endless = true, .token_delay = absl::Milliseconds(10)});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client victim(*address);
  Client attacker(*address);
  const auto abort = [&](const std::string& id) {
    grpc::ClientContext context;
    v1::AbortRequest request;
    request.set_request_id(id);
    v1::AbortResponse response;
    EXPECT_TRUE(attacker.stub().Abort(&context, request, &response).ok());
    return response.found();
  };
  std::vector<std::string> refused;
  const Result r = victim.Generate(IdsRequest({1}, "victim"), std::nullopt, [&](int tokens, grpc::ClientContext&) {
    if (tokens < 2 || !refused.empty()) return;
    const std::string id = decode.log.Copy(&FakeLog::full_ids).at(0);
    std::string off_by_one = id;
    off_by_one.back() = off_by_one.back() == '0' ? '1' : '0';
    for (const std::string& guess : {std::string("victim"), std::string("victim-") + std::string(32, '0'), off_by_one,
                                    id.substr(0, id.size() - 1), id + "0", std::string("victim\nforged log line")}) {
      if (!abort(guess)) refused.push_back(guess);
    }
    EXPECT_EQ(refused.size(), 6u) << "a guessed id found the victim's request";
    EXPECT_TRUE(abort(id));  // the owner's abort
  });
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->finish_reason(), v1::ABORT);
  EXPECT_EQ(refused.size(), 6u);

  // Two requests with the same label get different random parts of 128 bits.
  const Result other = Client(*address).Generate(IdsRequest({1}, "victim"), absl::Milliseconds(300));
  ASSERT_GE(other.messages.size(), 1u) << other.status.error_message();
  EXPECT_THAT(other.messages.front().request_id(), MatchesRegex("victim-[0-9a-f]{32}"));
  EXPECT_NE(other.messages.front().request_id(), r.messages.front().request_id());
}

TEST(RouterTest, DecodeFailureBeforeTheFirstTokenIsRetriedOnAnotherWorker) {
  FakePrefillWorker prefill({});
  // P2C over two workers always compares both: the failing, idle one is tried first.
  FakeDecodeWorker failing({.worker_id = "failing",
                            .running_sequences = 0,
                            .fail_before_admitted = grpc::Status(grpc::StatusCode::INTERNAL, "simulated crash")});
  FakeDecodeWorker good({.worker_id = "good", .running_sequences = 5, .tokens = {31, 32}});
  Router router(OptionsFor({&prefill}, {&failing, &good}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}, "retry-me"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAre(31, 32));
  EXPECT_EQ(r.final->decode_worker(), "good");
  EXPECT_THAT(failing.log.Copy(&FakeLog::requests), ElementsAre("retry-me"));
  EXPECT_THAT(good.log.Copy(&FakeLog::requests), ElementsAre("retry-me#retry1"));  // a fresh request
  EXPECT_TRUE(failing.log.Aborted("retry-me"));
}

// A handoff whose rows arrived corrupted is retried even on the same pair: the only decode worker
// takes the retry (an ordinary failure would exclude it, leaving no worker).
TEST(RouterTest, AHandoffThatLostDataIsRetriedOnTheSamePair) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.worker_id = "only",
                           .fail_first_calls = 1,
                           .tokens = {41, 42},
                           .failure = grpc::Status(grpc::StatusCode::DATA_LOSS, "chunk 3 failed its checksum")});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}, "corrupt"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAre(41, 42));
  EXPECT_THAT(decode.log.Copy(&FakeLog::requests), ElementsAre("corrupt", "corrupt#retry1"));
}

// A request's result with the client's time to its first token and to the end.
struct TimedResult {
  Result result;
  std::optional<absl::Duration> first_token;
  absl::Duration total;
};

TimedResult GenerateTimed(const std::string& address, const v1::GenerateRequest& request) {
  TimedResult timed;
  const absl::Time start = absl::Now();
  timed.result = Client(address).Generate(request, std::nullopt, [&](int tokens, grpc::ClientContext&) {
    if (tokens > 0 && !timed.first_token) timed.first_token = absl::Now() - start;
  });
  timed.total = absl::Now() - start;
  return timed;
}

TEST(RouterTest, TheFirstTokenIsRelayedWithoutWaitingForThePrefillWorkersAnswer) {
  // D streams only after the handoff; P answers 3 s later. The client sees the tokens before that.
  FakePrefillWorker prefill({.answer_delay = absl::Seconds(3)});
  FakeDecodeWorker decode({.tokens = {21, 22}});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const TimedResult timed = GenerateTimed(*address, IdsRequest({1, 2}, "early"));
  const Result& r = timed.result;
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAre(21, 22));
  ASSERT_TRUE(timed.first_token.has_value());
  EXPECT_LT(*timed.first_token, absl::Seconds(2)) << "the first token waited for the prefill worker's answer";
  EXPECT_GE(timed.total, absl::Seconds(3)) << "the final message comes after both calls ended";
}

TEST(RouterTest, TheFirstTokenComesFromThePrefillWorkerWithoutWaitingForTheHandoffsTail) {
  // P streams its first token, then needs 3 s for the handoff's last rows; D streams after them.
  FakePrefillWorker prefill({.tail_delay = absl::Seconds(3)});
  FakeDecodeWorker decode({.tokens = {21, 22, 23}});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const TimedResult timed = GenerateTimed(*address, IdsRequest({1, 2}, "from-p"));
  const Result& r = timed.result;
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  // 21 once: from P; D, told so, leaves it out of its stream.
  EXPECT_THAT(r.tokens, ElementsAre(21, 22, 23));
  ASSERT_TRUE(timed.first_token.has_value());
  EXPECT_LT(*timed.first_token, absl::Seconds(2)) << "the first token waited for the handoff";
  EXPECT_GE(timed.total, absl::Seconds(3));
}

TEST(RouterTest, TheDecodeWorkersTokensWaitForThePrefillWorkersFirstToken) {
  // The handoff completes and D streams before P's first token reaches the router.
  FakePrefillWorker prefill({.first_token_lag = absl::Milliseconds(400)});
  FakeDecodeWorker decode({.tokens = {21, 22, 23}});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1, 2}, "in-order"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAre(21, 22, 23));
}

TEST(RouterTest, APrefillWorkerThatFailsAfterItsFirstTokenMovesTheStreamWithThatToken) {
  FakePrefillWorker failing({.worker_id = "p-failing",
                             .fail_after_first_token = grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone")});
  FakePrefillWorker good({.worker_id = "p-good", .queued_prompt_tokens = 100});
  FakeDecodeWorker decode({.tokens = {21, 22, 23}});
  Router router(OptionsFor({&failing, &good}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1, 2}, "p-dies"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->prefill_worker(), "p-good");
  // The client has the failed attempt's first token; the next attempt resumes after it.
  ASSERT_FALSE(r.tokens.empty());
  EXPECT_EQ(r.tokens.front(), 21);
  EXPECT_THAT(good.log.Copy(&FakeLog::prompts), ElementsAre(ElementsAre(1, 2, 21)));
  EXPECT_THAT(good.log.Copy(&FakeLog::resumed_tokens), ElementsAre(1));
  EXPECT_THAT(decode.log.Copy(&FakeLog::resumed_tokens), ElementsAre(0, 1));
  EXPECT_TRUE(decode.log.Aborted("p-dies"));
}

// D dies during the handoff's tail, after P's first token reached the client: P's call fails first,
// marked as the decode worker's doing, and cancels the Decode call. The stream moves to another decode
// worker, and the prefill worker, which did nothing wrong, serves it again.
TEST(RouterTest, AHandoffTheDecodeWorkerBrokeIsBlamedOnTheDecodeWorker) {
  FakePrefillWorker prefill({.worker_id = "p0", .break_handoffs_to = "handoff.d-dies"});
  FakeDecodeWorker dies({.worker_id = "d-dies", .tokens = {21, 22, 23}});
  FakeDecodeWorker good({.worker_id = "d-good", .running_sequences = 9, .tokens = {21, 22, 23}});
  Router router(OptionsFor({&prefill}, {&dies, &good}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1, 2}, "d-breaks"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->decode_worker(), "d-good");
  EXPECT_EQ(r.final->prefill_worker(), "p0");
  EXPECT_THAT(prefill.log.Copy(&FakeLog::handoff_addresses), ElementsAre("handoff.d-dies", "handoff.d-good"));
  EXPECT_THAT(good.log.Copy(&FakeLog::resumed_tokens), ElementsAre(1));  // the first token moved with it
  EXPECT_TRUE(dies.log.Aborted("d-breaks"));
}

TEST(RouterTest, PrefillFailureIsRetriedOnAnotherPrefillWorker) {
  FakePrefillWorker failing(
      {.worker_id = "failing", .queued_prompt_tokens = 0, .failure = grpc::Status(grpc::StatusCode::UNAVAILABLE, "oom")});
  FakePrefillWorker good({.worker_id = "good", .queued_prompt_tokens = 100});
  FakeDecodeWorker decode({});
  Router router(OptionsFor({&failing, &good}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}, "p-retry"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final->prefill_worker(), "good");
  // The first attempt's decode reservation was given back.
  EXPECT_TRUE(decode.log.Aborted("p-retry"));
  EXPECT_THAT(decode.log.Copy(&FakeLog::requests), ElementsAre("p-retry", "p-retry#retry1"));
  // The failing worker still answers its health checks, so it stays in the pool.
  EXPECT_EQ(router.Pool().size(), 3u);
}

TEST(RouterTest, DecodeFailureAfterATokenMigratesTheStreamWithTheTokensSoFar) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.worker_id = "d-flaky", .tokens = {41, 42, 43, 44}, .fail_after_tokens = 2});
  FakeDecodeWorker other({.worker_id = "d-other", .running_sequences = 9, .tokens = {51, 52, 53}});
  Router router(OptionsFor({&prefill}, {&decode, &other}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  v1::GenerateRequest request = IdsRequest({1, 2}, "moving");
  request.mutable_sampling()->set_max_new_tokens(5);
  const Result r = Client(*address).Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  // The same stream: what d-flaky streamed, then what d-other streamed, nothing twice.
  EXPECT_THAT(r.tokens, ElementsAre(41, 42, 51, 52, 53));
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->decode_worker(), "d-other");
  EXPECT_EQ(r.final->prompt_tokens(), 2);      // the client's prompt
  EXPECT_EQ(r.final->generated_tokens(), 5);   // every token streamed, over both attempts
  // The next attempt prefills the prompt and the streamed tokens, marked as resumed, with the rest of
  // the token budget, as a fresh request on both workers.
  EXPECT_THAT(other.log.Copy(&FakeLog::requests), ElementsAre("moving#retry1"));
  EXPECT_THAT(other.log.Copy(&FakeLog::prompts), ElementsAre(ElementsAre(1, 2, 41, 42)));
  EXPECT_THAT(other.log.Copy(&FakeLog::resumed_tokens), ElementsAre(2));
  EXPECT_THAT(other.log.Copy(&FakeLog::max_new_tokens), ElementsAre(3));
  EXPECT_THAT(prefill.log.Copy(&FakeLog::prompts), ElementsAre(ElementsAre(1, 2), ElementsAre(1, 2, 41, 42)));
  EXPECT_THAT(prefill.log.Copy(&FakeLog::resumed_tokens), ElementsAre(0, 2));
  EXPECT_THAT(prefill.log.Copy(&FakeLog::max_new_tokens), ElementsAre(5, 3));
  EXPECT_TRUE(decode.log.Aborted("moving"));
}

TEST(RouterTest, PastTheMigrationLimitTheStreamEndsUnavailableNamingTheWorker) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.worker_id = "d-flaky", .tokens = {41, 42, 43, 44}, .fail_after_tokens = 2});
  FakeDecodeWorker other({.worker_id = "d-other", .running_sequences = 9, .tokens = {51, 52, 53},
                          .fail_after_tokens = 1});
  RouterOptions options = OptionsFor({&prefill}, {&decode, &other});
  options.migration_limit = 1;
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}));
  EXPECT_THAT(r.tokens, ElementsAre(41, 42, 51));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("d-other"));
  EXPECT_THAT(r.status.error_message(), HasSubstr(other.address()));
  EXPECT_THAT(r.status.error_message(), HasSubstr("after 3 tokens had been streamed"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("migration limit (1)"));
  EXPECT_FALSE(r.final.has_value());
}

TEST(RouterTest, WithMigrationOffADecodeFailureAfterATokenEndsTheStream) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.worker_id = "d-flaky", .tokens = {41, 42, 43, 44}, .fail_after_tokens = 2});
  FakeDecodeWorker other({.worker_id = "d-other", .running_sequences = 9});
  RouterOptions options = OptionsFor({&prefill}, {&decode, &other});
  options.migration_limit = 0;
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}));
  EXPECT_THAT(r.tokens, ElementsAre(41, 42));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("d-flaky"));
  EXPECT_THAT(r.status.error_message(), HasSubstr(decode.address()));
  EXPECT_FALSE(r.final.has_value());
  EXPECT_TRUE(other.log.Copy(&FakeLog::requests).empty());  // never sent elsewhere after a token
}

TEST(RouterTest, AStreamWithNoDecodeWorkerLeftToMoveToEndsUnavailableSayingWhy) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.worker_id = "d-only", .tokens = {41, 42, 43}, .fail_after_tokens = 1,
                           .failure = grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset")});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}));
  EXPECT_THAT(r.tokens, ElementsAre(41));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("connection reset"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("after 1 tokens had been streamed; migrating the stream"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("no decode worker is in the pool besides the one that failed"));
}

// A stream that moved twice and then found no decode worker names every move's cause, the first one
// (here the drain that started it all) included.
TEST(RouterTest, AStreamThatMovedTwiceNamesEveryCauseWhenItCannotMoveAgain) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker first({.worker_id = "d-first", .tokens = {41, 42, 43}, .fail_after_tokens = 1,
                          .failure = grpc::Status(grpc::StatusCode::UNAVAILABLE, "drain grace ended")});
  FakeDecodeWorker second({.worker_id = "d-second", .running_sequences = 5, .tokens = {42, 43},
                           .fail_after_tokens = 1,
                           .failure = grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset")});
  Router router(OptionsFor({&prefill}, {&first, &second}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();

  const Result r = Client(*address).Generate(IdsRequest({1}));
  EXPECT_THAT(r.tokens, ElementsAre(41, 42));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("drain grace ended"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("; then "));
  EXPECT_THAT(r.status.error_message(), HasSubstr("connection reset"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("after 2 tokens had been streamed; migrating the stream"));
}

TEST(RouterTest, DeadWorkerLeavesThePoolAndRequestsGoToTheSurvivor) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker doomed({.worker_id = "doomed", .running_sequences = 0});
  FakeDecodeWorker survivor({.worker_id = "survivor", .running_sequences = 3});
  Router router(OptionsFor({&prefill}, {&doomed, &survivor}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(router.Pool().size(), 3u);

  doomed.Kill();
  // The next request may pick the dead worker before a health check noticed: it is retried.
  const Result r = Client(*address).Generate(IdsRequest({1}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final->decode_worker(), "survivor");
  ASSERT_TRUE(WaitFor([&] { return router.Pool().size() == 2u; }));
  for (const WorkerInfo& w : router.Pool()) EXPECT_NE(w.id, "doomed");
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Client(*address).Generate(IdsRequest({1})).final->decode_worker(), "survivor");
  }
}

TEST(RouterTest, NoWorkersMeansUnavailable) {
  RouterOptions options;
  options.model_dir = kModelDir;
  options.cluster_token = ::indexcache::testing::TestClusterToken();
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  const Result r = Client(*address).Generate(IdsRequest({1}));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("no decode worker"));
}

TEST(RouterTest, ModelInfoDescribesTheModelAndThePool) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker d0({.worker_id = "d0"});
  FakeDecodeWorker d1({.worker_id = "d1"});
  Router router(OptionsFor({&prefill}, {&d0, &d1}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  grpc::ClientContext context;
  v1::ModelInfoResponse info;
  ASSERT_TRUE(Client(*address).stub().ModelInfo(&context, v1::ModelInfoRequest(), &info).ok());
  // The bundled model's config.json.
  EXPECT_EQ(info.architecture(), "GlmMoeDsaForCausalLM");
  EXPECT_EQ(info.num_layers(), 8);
  EXPECT_EQ(info.vocab_size(), 2048);
  EXPECT_EQ(info.max_context(), 8192);
  EXPECT_TRUE(info.has_tokenizer());
  EXPECT_EQ(info.index_pattern().size(), 8u);
  EXPECT_EQ(info.model_fingerprint().size(), 16u);
  EXPECT_EQ(info.prefill_workers(), 1);
  EXPECT_EQ(info.decode_workers(), 2);
}

TEST(RouterTest, DrainRefusesNewRequestsAndFinishesThoseInFlight) {
  FakePrefillWorker prefill({});
  FakeDecodeWorker decode({.hold_admission = true});
  Router router(OptionsFor({&prefill}, {&decode}));
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  Client client(*address);

  Result held;
  std::thread first([&] { held = client.Generate(IdsRequest({1})); });
  ASSERT_TRUE(WaitFor([&] { return !decode.log.Copy(&FakeLog::requests).empty(); }));
  std::thread drain([&] { router.Drain(absl::Seconds(30)); });
  ASSERT_TRUE(WaitFor([&] { return !CheckHealth(client.channel(), absl::Seconds(1)).ok(); }));
  const Result refused = client.Generate(IdsRequest({1}));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("draining"));
  decode.ReleaseAdmission();
  first.join();
  EXPECT_TRUE(held.status.ok()) << held.status.error_message();
  drain.join();
  router.Wait();
}

}  // namespace
}  // namespace indexcache
