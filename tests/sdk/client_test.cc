// The C++ client against a scripted in-process IndexCache server on loopback: what the client sends
// is checked on the server side (unset sampling fields stay unset), what the server sends is checked
// on the client side, and so are cancellation, deadlines and error statuses.
#include "indexcache/client.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "indexcache/v1/generate.grpc.pb.h"
#include "tests/test_certificates.h"

namespace indexcache::client {
namespace {

using ::indexcache::testing::IssueCertificate;
using ::indexcache::testing::MakeCertificateAuthority;
using ::indexcache::testing::PemIdentity;
using ::indexcache::testing::WriteTestFile;
using ::testing::HasSubstr;

// Each prompt text names a script; token-id prompts get the "three chunks" one.
class FakeIndexCache final : public v1::IndexCache::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    {
      std::lock_guard lock(mu_);
      requests_.push_back(*request);
    }
    const std::string script = request->text();
    if (script == "reject") return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "prompt is empty");
    if (script == "busy") return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    if (script == "hang") {
      writer->Write(Chunk({1}, "a"));
      // Holds the call open until the client cancels or its deadline passes.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (!context->IsCancelled() && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      std::lock_guard lock(mu_);
      saw_cancel_ = context->IsCancelled();
      cancel_seen_.notify_all();
      return grpc::Status::OK;
    }
    if (script == "no final") {
      writer->Write(Chunk({1}, "a"));
      return grpc::Status::OK;
    }
    if (script == "failed") {
      v1::GenerateResponse last = Chunk({4}, "x");
      last.mutable_final()->set_finish_reason(v1::ERROR);
      last.mutable_final()->set_error("decode worker lost");
      writer->Write(last);
      return grpc::Status::OK;
    }
    writer->Write(Chunk({5, 6}, "he"));
    writer->Write(Chunk({7}, "llo"));
    v1::GenerateResponse last = Chunk({}, "");
    v1::FinalInfo& final = *last.mutable_final();
    final.set_finish_reason(v1::LENGTH);
    final.set_prompt_tokens(4);
    final.set_generated_tokens(3);
    final.mutable_timings()->set_first_token_seconds(0.25);
    final.mutable_timings()->set_handoff_seconds(0.125);
    final.set_index_pattern("FSFS");
    final.set_decode_worker("decode-0");
    writer->Write(last);
    return grpc::Status::OK;
  }

  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest* request, v1::AbortResponse* response) override {
    std::lock_guard lock(mu_);
    aborted_.push_back(request->request_id());
    response->set_found(request->request_id() == "known-id");
    return grpc::Status::OK;
  }

  grpc::Status ModelInfo(grpc::ServerContext*, const v1::ModelInfoRequest*, v1::ModelInfoResponse* response) override {
    response->set_architecture("GlmMoeDsaForCausalLM");
    response->set_num_layers(16);
    response->set_index_pattern("FSSSFSSSFSSSFSSS");
    response->set_num_full_layers(4);
    response->set_max_context(4096);
    response->set_has_tokenizer(true);
    response->set_decode_workers(2);
    response->set_length_patterns("8192:FSSSSSSSFSSSSSSS");
    return grpc::Status::OK;
  }

  v1::GenerateRequest LastRequest() {
    std::lock_guard lock(mu_);
    return requests_.back();
  }
  std::vector<std::string> Aborted() {
    std::lock_guard lock(mu_);
    return aborted_;
  }
  // Whether a "hang" call saw its cancellation within `wait`.
  bool WaitForCancel(std::chrono::milliseconds wait) {
    std::unique_lock lock(mu_);
    return cancel_seen_.wait_for(lock, wait, [&] { return saw_cancel_; });
  }

 private:
  static v1::GenerateResponse Chunk(std::vector<int32_t> ids, std::string text) {
    v1::GenerateResponse response;
    response.set_request_id("req-42");
    for (int32_t id : ids) response.add_token_ids(id);
    response.set_text(text);
    return response;
  }

  std::mutex mu_;
  std::condition_variable cancel_seen_;
  std::vector<v1::GenerateRequest> requests_;
  std::vector<std::string> aborted_;
  bool saw_cancel_ = false;
};

class ClientTest : public ::testing::Test {
 protected:
  virtual std::shared_ptr<grpc::ServerCredentials> ServerCredentials() { return grpc::InsecureServerCredentials(); }

  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", ServerCredentials(), &port);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)); }

  Client Connect(ClientOptions options = {}) {
    options.connect_timeout = absl::Seconds(5);
    absl::StatusOr<Client> client = Client::Connect(address_, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  FakeIndexCache fake_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(ClientTest, BlockingGenerateCollectsEveryChunkAndTheFinalInfo) {
  absl::StatusOr<GenerateResult> result = Connect().Generate(GenerateRequest::FromText("three chunks"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->request_id, "req-42");
  EXPECT_EQ(result->output_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(result->text, "hello");
  EXPECT_EQ(result->final.finish_reason, FinishReason::kLength);
  EXPECT_EQ(FinishReasonName(result->final.finish_reason), "length");
  EXPECT_EQ(result->final.prompt_tokens, 4);
  EXPECT_EQ(result->final.generated_tokens, 3);
  EXPECT_EQ(result->final.timings.first_token_seconds, 0.25);
  EXPECT_EQ(result->final.timings.handoff_seconds, 0.125);
  EXPECT_EQ(result->final.index_pattern, "FSFS");
  EXPECT_EQ(result->final.decode_worker, "decode-0");
}

TEST_F(ClientTest, StreamDeliversChunksInOrderThenEnds) {
  GenerateStream stream = Connect().Stream(GenerateRequest::FromIds({3, 1, 4}));
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::string> texts;
  std::vector<bool> finals;
  while (true) {
    absl::StatusOr<std::optional<GenerateChunk>> chunk = stream.Next();
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    if (!chunk->has_value()) break;
    ids.push_back((*chunk)->token_ids);
    texts.push_back((*chunk)->text);
    finals.push_back((*chunk)->final.has_value());
  }
  EXPECT_EQ(ids, (std::vector<std::vector<int32_t>>{{5, 6}, {7}, {}}));
  EXPECT_EQ(texts, (std::vector<std::string>{"he", "llo", ""}));
  EXPECT_EQ(finals, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(stream.request_id(), "req-42");
  // The end is sticky.
  absl::StatusOr<std::optional<GenerateChunk>> again = stream.Next();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());
}

TEST_F(ClientTest, CancelFromAnotherThreadEndsTheStreamAndTheServerSeesIt) {
  GenerateStream stream = Connect().Stream(GenerateRequest::FromText("hang"));
  absl::StatusOr<std::optional<GenerateChunk>> first = stream.Next();
  ASSERT_TRUE(first.ok() && first->has_value()) << first.status();
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stream.Cancel();
  });
  absl::StatusOr<std::optional<GenerateChunk>> next = stream.Next();  // blocked until the cancel
  canceller.join();
  EXPECT_EQ(next.status().code(), absl::StatusCode::kCancelled) << next.status();
  EXPECT_THAT(next.status().message(), HasSubstr("cancelled by the client"));
  EXPECT_TRUE(fake_.WaitForCancel(std::chrono::seconds(5)));
}

TEST_F(ClientTest, DestroyingAnUnfinishedStreamCancelsIt) {
  {
    GenerateStream stream = Connect().Stream(GenerateRequest::FromText("hang"));
    ASSERT_TRUE(stream.Next().ok());
  }
  EXPECT_TRUE(fake_.WaitForCancel(std::chrono::seconds(5)));
}

TEST_F(ClientTest, PerCallTimeoutIsDeadlineExceededWithContext) {
  GenerateRequest request = GenerateRequest::FromText("hang");
  request.timeout = absl::Milliseconds(200);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<GenerateResult> result = Connect().Generate(request);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("Generate on " + address_));
  EXPECT_THAT(result.status().message(), HasSubstr("deadline of 200ms"));
  // The server's side of the call ends too, so the workers can free the request.
  EXPECT_TRUE(fake_.WaitForCancel(std::chrono::seconds(5)));
}

TEST_F(ClientTest, DefaultTimeoutAppliesWhenTheCallSetsNone) {
  ClientOptions options;
  options.default_timeout = absl::Milliseconds(150);
  absl::StatusOr<GenerateResult> result = Connect(options).Generate(GenerateRequest::FromText("hang"));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("deadline of 150ms"));
}

TEST_F(ClientTest, ServerStatusesKeepTheirCodeAndMessage) {
  const Client client = Connect();
  absl::StatusOr<GenerateResult> rejected = client.Generate(GenerateRequest::FromText("reject"));
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rejected.status().message(), HasSubstr("prompt is empty"));
  EXPECT_THAT(rejected.status().message(), HasSubstr(address_));
  EXPECT_EQ(client.Generate(GenerateRequest::FromText("busy")).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(ClientTest, StreamWithoutFinalMessageIsAnError) {
  absl::StatusOr<GenerateResult> result = Connect().Generate(GenerateRequest::FromText("no final"));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(result.status().message(), HasSubstr("without a final message"));
}

TEST_F(ClientTest, FinishReasonErrorIsReportedInTheResult) {
  absl::StatusOr<GenerateResult> result = Connect().Generate(GenerateRequest::FromText("failed"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->final.finish_reason, FinishReason::kError);
  EXPECT_EQ(result->final.error, "decode worker lost");
  EXPECT_EQ(result->output_ids, (std::vector<int32_t>{4}));
}

TEST_F(ClientTest, UnsetSamplingFieldsStayUnsetOnTheWire) {
  ASSERT_TRUE(Connect().Generate(GenerateRequest::FromText("three chunks")).ok());
  const v1::GenerateRequest sent = fake_.LastRequest();
  EXPECT_EQ(sent.input_case(), v1::GenerateRequest::kText);
  EXPECT_EQ(sent.text(), "three chunks");
  EXPECT_TRUE(sent.request_id().empty());
  const v1::SamplingParameters& s = sent.sampling();
  EXPECT_FALSE(s.has_temperature());
  EXPECT_FALSE(s.has_top_k());
  EXPECT_FALSE(s.has_top_p());
  EXPECT_FALSE(s.has_min_p());
  EXPECT_FALSE(s.has_seed());
  EXPECT_FALSE(s.has_max_new_tokens());
  EXPECT_FALSE(s.has_ignore_eos());
  EXPECT_EQ(s.stop_size(), 0);
  EXPECT_EQ(s.stop_token_ids_size(), 0);
}

TEST_F(ClientTest, SetSamplingFieldsAreSentEvenWhenZero) {
  GenerateRequest request = GenerateRequest::FromIds({3, 1, 4});
  request.request_id = "mine";
  request.sampling.temperature = 0.0f;  // greedy, explicitly
  request.sampling.seed = 0;
  request.sampling.max_new_tokens = 3;
  request.sampling.ignore_eos = false;
  request.sampling.stop = {"\n\n"};
  request.sampling.stop_token_ids = {2};
  ASSERT_TRUE(Connect().Generate(request).ok());
  const v1::GenerateRequest sent = fake_.LastRequest();
  EXPECT_EQ(sent.input_case(), v1::GenerateRequest::kTokenIds);
  EXPECT_EQ(std::vector<int32_t>(sent.token_ids().ids().begin(), sent.token_ids().ids().end()),
            (std::vector<int32_t>{3, 1, 4}));
  EXPECT_EQ(sent.request_id(), "mine");
  const v1::SamplingParameters& s = sent.sampling();
  ASSERT_TRUE(s.has_temperature());
  EXPECT_EQ(s.temperature(), 0.0f);
  ASSERT_TRUE(s.has_seed());
  EXPECT_EQ(s.seed(), 0u);
  EXPECT_EQ(s.max_new_tokens(), 3);
  EXPECT_TRUE(s.has_ignore_eos());
  EXPECT_FALSE(s.has_top_k());
  ASSERT_EQ(s.stop_size(), 1);
  EXPECT_EQ(s.stop(0), "\n\n");
  ASSERT_EQ(s.stop_token_ids_size(), 1);
  EXPECT_EQ(s.stop_token_ids(0), 2);
}

TEST_F(ClientTest, AbortReportsWhetherTheRouterKnewTheId) {
  const Client client = Connect();
  absl::StatusOr<bool> known = client.Abort("known-id");
  ASSERT_TRUE(known.ok()) << known.status();
  EXPECT_TRUE(*known);
  absl::StatusOr<bool> unknown = client.Abort("other");
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_FALSE(*unknown);
  EXPECT_EQ(fake_.Aborted(), (std::vector<std::string>{"known-id", "other"}));
}

TEST_F(ClientTest, ModelInfoIsMirrored) {
  absl::StatusOr<ModelInfo> info = Connect().GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->architecture, "GlmMoeDsaForCausalLM");
  EXPECT_EQ(info->num_layers, 16);
  EXPECT_EQ(info->index_pattern, "FSSSFSSSFSSSFSSS");
  EXPECT_EQ(info->num_full_layers, 4);
  EXPECT_EQ(info->max_context, 4096);
  EXPECT_TRUE(info->has_tokenizer);
  EXPECT_EQ(info->decode_workers, 2);
  EXPECT_EQ(info->length_patterns, "8192:FSSSSSSSFSSSSSSS");
}

// The fake router over TLS, with a certificate for localhost and 127.0.0.1 from a CA made here; with
// `require_client_certificate`, clients must show one that CA signed.
class ClientTlsTest : public ClientTest {
 protected:
  static const PemIdentity& Ca() {
    static const PemIdentity ca = MakeCertificateAuthority("indexcache test CA");
    return ca;
  }
  static const PemIdentity& Issued(const std::string& name) {
    static const PemIdentity server = IssueCertificate(Ca(), "router");
    static const PemIdentity client = IssueCertificate(Ca(), "client");
    return name == "router" ? server : client;
  }

  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() override {
    grpc::SslServerCredentialsOptions options(require_client_certificate_
                                                  ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    options.pem_root_certs = Ca().certificate;
    options.pem_key_cert_pairs.push_back({Issued("router").private_key, Issued("router").certificate});
    return grpc::SslServerCredentials(options);
  }

  // Generate through a client with `tls` (unset: plaintext).
  absl::Status GenerateWith(std::optional<TlsOptions> tls) {
    ClientOptions options;
    options.tls = std::move(tls);
    options.default_timeout = absl::Seconds(5);
    absl::StatusOr<Client> client = Client::Connect(address_, options);
    if (!client.ok()) return client.status();
    return client->Generate(GenerateRequest::FromText("three chunks")).status();
  }

  static TlsOptions TrustingTheCa() {
    TlsOptions tls;
    tls.ca_certificates_file = WriteTestFile("ca.crt", Ca().certificate);
    return tls;
  }

  bool require_client_certificate_ = false;
};

TEST_F(ClientTlsTest, AClientTrustingTheCaIsServedAndOthersAreNot) {
  EXPECT_TRUE(GenerateWith(TrustingTheCa()).ok());
  TlsOptions pem;
  pem.ca_certificates_pem = Ca().certificate;
  EXPECT_TRUE(GenerateWith(pem).ok());
  TlsOptions named = TrustingTheCa();
  named.server_name = "localhost";
  EXPECT_TRUE(GenerateWith(named).ok());

  EXPECT_EQ(GenerateWith(std::nullopt).code(), absl::StatusCode::kUnavailable) << "plaintext";
  TlsOptions stranger;
  stranger.ca_certificates_pem = MakeCertificateAuthority("another CA").certificate;
  EXPECT_EQ(GenerateWith(stranger).code(), absl::StatusCode::kUnavailable);
  TlsOptions misnamed = TrustingTheCa();
  misnamed.server_name = "router.example.com";
  EXPECT_EQ(GenerateWith(misnamed).code(), absl::StatusCode::kUnavailable) << "the certificate names localhost";
}

TEST_F(ClientTlsTest, BadTlsOptionsAreRefusedAtConnect) {
  TlsOptions both = TrustingTheCa();
  both.ca_certificates_pem = Ca().certificate;
  EXPECT_EQ(GenerateWith(both).code(), absl::StatusCode::kInvalidArgument);
  TlsOptions missing;
  missing.ca_certificates_file = "/nonexistent/ca.crt";
  const absl::Status unreadable = GenerateWith(missing);
  EXPECT_EQ(unreadable.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unreadable.message(), HasSubstr("/nonexistent/ca.crt"));
  TlsOptions half = TrustingTheCa();
  half.client_certificate_file = WriteTestFile("client.crt", Issued("client").certificate);
  EXPECT_EQ(GenerateWith(half).code(), absl::StatusCode::kInvalidArgument);
}

class ClientMutualTlsTest : public ClientTlsTest {
 protected:
  void SetUp() override {
    require_client_certificate_ = true;
    ClientTlsTest::SetUp();
  }
};

TEST_F(ClientMutualTlsTest, AClientCertificateIsPresentedWhenGiven) {
  EXPECT_EQ(GenerateWith(TrustingTheCa()).code(), absl::StatusCode::kUnavailable);
  TlsOptions with_certificate = TrustingTheCa();
  with_certificate.client_certificate_file = WriteTestFile("client.crt", Issued("client").certificate);
  with_certificate.client_key_file = WriteTestFile("client.key", Issued("client").private_key);
  const absl::Status status = GenerateWith(with_certificate);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(ClientConnectTest, RejectsBadOptionsAndUnreachableRouters) {
  EXPECT_EQ(Client::Connect("").status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions negative_timeout;
  negative_timeout.default_timeout = absl::Seconds(-1);
  EXPECT_EQ(Client::Connect("127.0.0.1:1", negative_timeout).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions wait_for_router;
  wait_for_router.connect_timeout = absl::Milliseconds(200);
  EXPECT_EQ(Client::Connect("127.0.0.1:1", wait_for_router).status().code(), absl::StatusCode::kUnavailable);
  // Without connect_timeout the failure shows up on the call, with the call's context.
  absl::StatusOr<Client> lazy = Client::Connect("127.0.0.1:1");
  ASSERT_TRUE(lazy.ok());
  absl::StatusOr<GenerateResult> result = lazy->Generate(GenerateRequest::FromText("x"));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("Generate on 127.0.0.1:1"));
  GenerateRequest negative = GenerateRequest::FromText("x");
  negative.timeout = absl::ZeroDuration();
  EXPECT_EQ(lazy->Generate(negative).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace indexcache::client
