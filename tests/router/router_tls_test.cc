// TLS on the router's public API (--tls-cert-file, --tls-key-file, --tls-client-ca-file): gRPC and the
// OpenAI-compatible HTTP API serve only clients that trust the router's certificate (and, with a
// client CA, show a certificate of their own), and a router with a TLS identity it cannot use does
// not start. The certificates are made by the test (tests/test_certificates.h).
#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio/ssl.hpp"
#include "boost/beast/ssl.hpp"
#include "common/util/host_port.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "indexcache/v1/generate.grpc.pb.h"
#include "services/router/router.h"
#include "services/router/router_command.h"
#include "tests/cluster_token_for_tests.h"
#include "tests/metrics/http_test_client.h"
#include "tests/router/fake_workers.h"
#include "tests/test_certificates.h"

namespace indexcache {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using ::indexcache::testing::FakeDecodeWorker;
using ::indexcache::testing::FakePrefillWorker;
using ::indexcache::testing::IssueCertificate;
using ::indexcache::testing::MakeCertificateAuthority;
using ::indexcache::testing::PemIdentity;
using ::indexcache::testing::WriteTestFile;
using ::testing::HasSubstr;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

// One certificate authority, the router's certificate and a client's, both issued by it; and an
// authority of nobody's.
struct Pki {
  PemIdentity ca = MakeCertificateAuthority("indexcache test CA");
  PemIdentity router = IssueCertificate(ca, "router");
  PemIdentity client = IssueCertificate(ca, "client");
  PemIdentity stranger_ca = MakeCertificateAuthority("another CA");

  ServerTls RouterTls(const std::string& client_ca = "") const {
    return ServerTls{router.certificate, router.private_key, client_ca};
  }
};

const Pki& TestPki() {
  static const Pki pki;
  return pki;
}

// A router with TLS and the HTTP API, on fake workers.
class TlsRouter {
 public:
  explicit TlsRouter(ServerTls tls, std::string api_key = "") {
    RouterOptions o;
    o.model_dir = kModelDir;
    o.cluster_token = ::indexcache::testing::TestClusterToken();
    o.prefill_workers = {prefill_.address()};
    o.decode_workers = {decode_.address()};
    o.health_check_interval = absl::Milliseconds(100);
    o.http_listen_address = "127.0.0.1:0";
    o.api_key = std::move(api_key);
    o.tls = std::move(tls);
    router_ = std::make_unique<Router>(o);
    absl::StatusOr<std::string> address = router_->Start();
    if (address.ok()) address_ = *address;
    status_ = address.status();
  }

  const absl::Status& status() const { return status_; }
  const std::string& address() const { return address_; }
  std::string http_address() const { return router_->http_address(); }

 private:
  FakePrefillWorker prefill_{{}};
  FakeDecodeWorker decode_{{}};
  std::unique_ptr<Router> router_;
  absl::Status status_;
  std::string address_;
};

std::shared_ptr<grpc::ChannelCredentials> TrustingCredentials(const std::string& ca,
                                                              const PemIdentity* client = nullptr) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ca;
  if (client != nullptr) {
    options.pem_cert_chain = client->certificate;
    options.pem_private_key = client->private_key;
  }
  return grpc::SslCredentials(options);
}

// ModelInfo through a channel with `credentials`, optionally presenting an API key.
grpc::Status CallModelInfo(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                           const std::string& api_key = "") {
  auto stub = v1::IndexCache::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  if (!api_key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", api_key));
  v1::ModelInfoResponse info;
  return stub->ModelInfo(&context, v1::ModelInfoRequest(), &info);
}

using HttpsStream = beast::ssl_stream<beast::tcp_stream>;

// A client's HTTPS connection that trusts `ca` and checks that the certificate names localhost.
class HttpsClient {
 public:
  explicit HttpsClient(const std::string& ca) {
    context_.add_certificate_authority(asio::buffer(ca));
    context_.set_verify_mode(asio::ssl::verify_peer);
  }

  absl::StatusOr<std::unique_ptr<HttpsStream>> Connect(const std::string& address) {
    absl::StatusOr<beast::tcp_stream> tcp = ::indexcache::testing::Connect(io_, address);
    if (!tcp.ok()) return tcp.status();
    auto stream = std::make_unique<HttpsStream>(std::move(*tcp), context_);
    SSL_set1_host(stream->native_handle(), "localhost");
    boost::system::error_code ec;
    stream->handshake(asio::ssl::stream_base::client, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("TLS handshake: ", ec.message()));
    return stream;
  }

 private:
  asio::io_context io_;
  asio::ssl::context context_{asio::ssl::context::tls_client};
};

absl::StatusOr<::indexcache::testing::HttpReply> HttpsGet(const std::string& address, const std::string& target,
                                                          const std::string& ca) {
  HttpsClient client(ca);
  absl::StatusOr<std::unique_ptr<HttpsStream>> stream = client.Connect(address);
  if (!stream.ok()) return stream.status();
  return ::indexcache::testing::Exchange(**stream, http::verb::get, target);
}

TEST(RouterTlsTest, AClientTrustingTheRoutersCaIsServedOverGrpc) {
  TlsRouter router(TestPki().RouterTls());
  ASSERT_TRUE(router.status().ok()) << router.status();
  const grpc::Status status = CallModelInfo(router.address(), TrustingCredentials(TestPki().ca.certificate));
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(RouterTlsTest, PlaintextAndClientsTrustingAnotherCaAreRefused) {
  TlsRouter router(TestPki().RouterTls());
  ASSERT_TRUE(router.status().ok()) << router.status();
  EXPECT_EQ(CallModelInfo(router.address(), grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(CallModelInfo(router.address(), TrustingCredentials(TestPki().stranger_ca.certificate)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST(RouterTlsTest, TheHttpApiServesHttpsAndRefusesPlainHttp) {
  TlsRouter router(TestPki().RouterTls());
  ASSERT_TRUE(router.status().ok()) << router.status();
  auto models = HttpsGet(router.http_address(), "/v1/models", TestPki().ca.certificate);
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->status, 200);
  EXPECT_THAT(models->body, HasSubstr("glm-dsa-tiny-random"));
  EXPECT_FALSE(::indexcache::testing::Get(router.http_address(), "/v1/models").ok())
      << "plain HTTP gets no answer from an HTTPS port";
  EXPECT_FALSE(HttpsGet(router.http_address(), "/v1/models", TestPki().stranger_ca.certificate).ok());
}

// Two requests sent before either answer, each in a TLS record of its own: the second may already
// sit decrypted-to-be inside OpenSSL when the first is answered, where a poll of the socket does not
// see it; it is answered at once all the same, not left waiting for bytes that already came (the
// server then closes the connection after its 60 s idle timeout, and the second read fails).
TEST(RouterTlsTest, PipelinedHttpsRequestsAreAnsweredWithoutWaitingForMoreBytes) {
  TlsRouter router(TestPki().RouterTls());
  ASSERT_TRUE(router.status().ok()) << router.status();
  HttpsClient client(TestPki().ca.certificate);
  absl::StatusOr<std::unique_ptr<HttpsStream>> stream = client.Connect(router.http_address());
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (int i = 0; i < 2; ++i) {
    http::request<http::empty_body> request{http::verb::get, "/v1/models", 11};
    request.set(http::field::host, "localhost");
    request.keep_alive(true);
    http::write(**stream, request);
  }
  beast::flat_buffer buffer;
  for (int i = 0; i < 2; ++i) {
    http::response<http::string_body> response;
    boost::system::error_code ec;
    http::read(**stream, buffer, response, ec);
    ASSERT_FALSE(ec) << "response " << i << ": " << ec.message();
    EXPECT_EQ(response.result_int(), 200);
  }
}

TEST(RouterTlsTest, TheApiKeyIsStillRequiredOverTls) {
  TlsRouter router(TestPki().RouterTls(), "open-sesame-42");
  ASSERT_TRUE(router.status().ok()) << router.status();
  const auto credentials = TrustingCredentials(TestPki().ca.certificate);
  EXPECT_EQ(CallModelInfo(router.address(), credentials).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status with_key = CallModelInfo(router.address(), credentials, "open-sesame-42");
  EXPECT_TRUE(with_key.ok()) << with_key.error_message();
  auto unauthorized = HttpsGet(router.http_address(), "/v1/models", TestPki().ca.certificate);
  ASSERT_TRUE(unauthorized.ok()) << unauthorized.status();
  EXPECT_EQ(unauthorized->status, 401);
}

TEST(RouterTlsTest, WithAClientCaOnlyClientsWithItsCertificatesAreServed) {
  TlsRouter router(TestPki().RouterTls(TestPki().ca.certificate));
  ASSERT_TRUE(router.status().ok()) << router.status();
  EXPECT_EQ(CallModelInfo(router.address(), TrustingCredentials(TestPki().ca.certificate)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  const PemIdentity stranger = IssueCertificate(TestPki().stranger_ca, "stranger");
  EXPECT_EQ(CallModelInfo(router.address(), TrustingCredentials(TestPki().ca.certificate, &stranger)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  const grpc::Status with_certificate =
      CallModelInfo(router.address(), TrustingCredentials(TestPki().ca.certificate, &TestPki().client));
  EXPECT_TRUE(with_certificate.ok()) << with_certificate.error_message();
  EXPECT_FALSE(HttpsGet(router.http_address(), "/v1/models", TestPki().ca.certificate).ok())
      << "the HTTPS port asks for the client certificate too";
}

// Without TLS the router warns of each public listener that is not on loopback.
TEST(RouterTlsTest, OnlyLoopbackListenersAreSparedThePlaintextWarning) {
  for (const std::string address : {"127.0.0.1:50051", "127.0.0.2:0", "[::1]:8000", "localhost:8000"}) {
    EXPECT_TRUE(IsLoopbackListenAddress(address)) << address;
  }
  for (const std::string address : {"0.0.0.0:50051", "[::]:50051", ":8000", "10.0.0.7:8000", "router:8000"}) {
    EXPECT_FALSE(IsLoopbackListenAddress(address)) << address;
  }
}

// What `indexcache-router` prints and returns for `flags` (after --model and the cluster token).
std::pair<int, std::string> RunRouter(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {"--model", kModelDir, "--cluster-token-file",
                                   WriteTestFile("cluster-token", ::indexcache::testing::kTestClusterSecret)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  ::testing::internal::CaptureStderr();
  const int code = RunRouterCommand(argv);
  return {code, ::testing::internal::GetCapturedStderr()};
}

TEST(RouterTlsTest, TheRouterRefusesToStartWithATlsIdentityItCannotUse) {
  const std::string certificate = WriteTestFile("router.crt", TestPki().router.certificate);
  const std::string key = WriteTestFile("router.key", TestPki().router.private_key);
  const std::string other_key = WriteTestFile("client.key", TestPki().client.private_key);
  const std::string not_pem = WriteTestFile("not.pem", "hello");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--tls-cert-file", certificate}, "--tls-cert-file and --tls-key-file go together"},
      {{"--tls-key-file", key}, "--tls-cert-file and --tls-key-file go together"},
      {{"--tls-cert-file", certificate, "--tls-key-file", other_key},
       absl::StrCat("the TLS private key ", other_key, " is not the key of the certificate ", certificate)},
      {{"--tls-cert-file", certificate, "--tls-key-file", "/nonexistent/router.key"},
       "cannot read the TLS private key from /nonexistent/router.key"},
      {{"--tls-cert-file", not_pem, "--tls-key-file", key}, absl::StrCat(not_pem, " holds no PEM certificate")},
      {{"--tls-cert-file", certificate, "--tls-key-file", not_pem}, absl::StrCat(not_pem, " holds no PEM private key")},
      {{"--tls-client-ca-file", certificate}, "--tls-client-ca-file needs --tls-cert-file and --tls-key-file"},
  };
  for (const auto& [flags, message] : cases) {
    const auto [code, stderr_text] = RunRouter(flags);
    EXPECT_EQ(code, 2) << message;
    EXPECT_THAT(stderr_text, HasSubstr(message));
  }
}

}  // namespace
}  // namespace indexcache
