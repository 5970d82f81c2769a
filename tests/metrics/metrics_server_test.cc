// The /metrics endpoint over real sockets: the exposition a scraper reads, what it answers to wrong
// paths, wrong methods and bytes that are not HTTP, and that it stops cleanly.
#include "common/metrics/metrics_server.h"

#include <atomic>
#include <chrono>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "tests/metrics/http_test_client.h"

namespace indexcache {
namespace {

using ::indexcache::testing::Connect;
using ::indexcache::testing::Exchange;
using ::indexcache::testing::Get;
using ::indexcache::testing::HttpReply;
using ::indexcache::testing::RawExchange;
namespace http = ::indexcache::testing::http;

// Parses the text exposition format: every line a comment (# HELP / # TYPE) or a sample
// `name{labels} value`. Returns the samples by their full series text; fails on any other line.
std::map<std::string, double> ParseExposition(const std::string& body) {
  static const std::regex kSample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?) (\S+)$)");
  static const std::regex kComment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  std::map<std::string, double> samples;
  std::istringstream lines(body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || std::regex_match(line, kComment)) continue;
    std::smatch m;
    EXPECT_TRUE(std::regex_match(line, m, kSample)) << "not a sample line: " << line;
    if (m.empty()) continue;
    samples[m[1]] = std::stod(m[3]);
  }
  return samples;
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& requests = prometheus::BuildCounter().Name("test_requests_total").Help("h").Register(*registry_);
    requests.Add({{"outcome", "ok"}}).Increment(3);
    requests.Add({{"outcome", "error"}}).Increment();
    auto& latency = prometheus::BuildHistogram().Name("test_latency_seconds").Help("h").Register(*registry_);
    prometheus::Histogram& h = latency.Add({}, prometheus::Histogram::BucketBoundaries{0.1, 1});
    h.Observe(0.05);
    h.Observe(0.5);
    h.Observe(5);
    scrapes_gauge_ = &prometheus::BuildGauge().Name("test_scrapes").Help("h").Register(*registry_).Add({});
    auto server = MetricsServer::Start("127.0.0.1:0", registry_, [this] { scrapes_gauge_->Set(++scrapes_); });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Gauge* scrapes_gauge_ = nullptr;
  int scrapes_ = 0;
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsServerTest, ServesTheRegistryAsTextExposition) {
  absl::StatusOr<HttpReply> reply = Get(server_->address());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(reply->content_type, "text/plain; version=0.0.4; charset=utf-8");
  const std::map<std::string, double> samples = ParseExposition(reply->body);
  EXPECT_EQ(samples.at(R"(test_requests_total{outcome="ok"})"), 3);
  EXPECT_EQ(samples.at(R"(test_requests_total{outcome="error"})"), 1);
  // Cumulative buckets of the three observations 0.05, 0.5, 5.
  EXPECT_EQ(samples.at(R"(test_latency_seconds_bucket{le="0.1"})"), 1);
  EXPECT_EQ(samples.at(R"(test_latency_seconds_bucket{le="1"})"), 2);
  EXPECT_EQ(samples.at(R"(test_latency_seconds_bucket{le="+Inf"})"), 3);
  EXPECT_EQ(samples.at("test_latency_seconds_count"), 3);
  EXPECT_DOUBLE_EQ(samples.at("test_latency_seconds_sum"), 5.55);
  EXPECT_EQ(reply->body.find("# TYPE test_requests_total counter") != std::string::npos, true);
}

TEST_F(MetricsServerTest, RefreshesBeforeEveryScrapeAndIgnoresTheQueryString) {
  for (int i = 1; i <= 3; ++i) {
    absl::StatusOr<HttpReply> reply = Get(server_->address(), i == 2 ? "/metrics?name[]=x" : "/metrics");
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_EQ(reply->status, 200);
    EXPECT_EQ(ParseExposition(reply->body).at("test_scrapes"), i);
  }
}

TEST_F(MetricsServerTest, KeepsAConnectionAliveAcrossRequests) {
  boost::asio::io_context io;
  auto stream = Connect(io, server_->address());
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<HttpReply> reply = Exchange(*stream, http::verb::get, "/metrics", /*keep_alive=*/true);
    ASSERT_TRUE(reply.ok()) << "request " << i << ": " << reply.status();
    EXPECT_EQ(reply->status, 200);
  }
}

TEST_F(MetricsServerTest, AnswersWrongPathsAndMethods) {
  absl::StatusOr<HttpReply> not_found = Get(server_->address(), "/");
  ASSERT_TRUE(not_found.ok()) << not_found.status();
  EXPECT_EQ(not_found->status, 404);
  not_found = Get(server_->address(), "/metricsx");
  ASSERT_TRUE(not_found.ok()) << not_found.status();
  EXPECT_EQ(not_found->status, 404);
  for (http::verb method : {http::verb::post, http::verb::put, http::verb::delete_, http::verb::head}) {
    absl::StatusOr<HttpReply> refused = Get(server_->address(), "/metrics", method);
    ASSERT_TRUE(refused.ok()) << refused.status();
    EXPECT_EQ(refused->status, 405) << http::to_string(method);
    EXPECT_EQ(refused->allow, "GET");
  }
  EXPECT_EQ(scrapes_, 0) << "refused requests must not scrape";
}

TEST_F(MetricsServerTest, AnswersGarbageWith400AndKeepsServing) {
  absl::StatusOr<std::string> answer = RawExchange(server_->address(), "this is not HTTP\r\n\r\n");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->rfind("HTTP/1.1 400", 0), 0u) << *answer;
  // A header far past the limit.
  answer = RawExchange(server_->address(),
                       "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->rfind("HTTP/1.1 400", 0), 0u) << answer->substr(0, 80);
  // Binary bytes, then a client that hangs up at once.
  answer = RawExchange(server_->address(), std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + "\r\n\r\n");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->rfind("HTTP/1.1 400", 0), 0u) << answer->substr(0, 80);
  {
    boost::asio::io_context io;
    ASSERT_TRUE(Connect(io, server_->address()).ok());
  }
  absl::StatusOr<HttpReply> reply = Get(server_->address());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
}

TEST_F(MetricsServerTest, StopsPromptlyWithConnectionsOpenAndFreesThePort) {
  const std::string address = server_->address();
  boost::asio::io_context io;
  auto idle = Connect(io, address);  // connected, never sends: the server waits on its read
  ASSERT_TRUE(idle.ok()) << idle.status();
  const auto begin = std::chrono::steady_clock::now();
  server_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - begin, std::chrono::seconds(2));
  EXPECT_FALSE(Get(address).ok()) << "still answering after it was destroyed";
  // The port is free again: a new server binds it.
  auto again = MetricsServer::Start(address, registry_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->address(), address);
}

TEST(MetricsServerStartTest, RefusesBadAddressesAndBusyPorts) {
  auto registry = std::make_shared<prometheus::Registry>();
  EXPECT_EQ(MetricsServer::Start("no-port-here", registry).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsServer::Start("127.0.0.1:99999", registry).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MetricsServer::Start("127.0.0.1:0", nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  auto first = MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  const absl::Status busy = MetricsServer::Start((*first)->address(), registry).status();
  EXPECT_EQ(busy.code(), absl::StatusCode::kUnavailable) << busy;
  EXPECT_NE(busy.message().find((*first)->address()), absl::string_view::npos) << busy;
}

TEST(MetricsServerStartTest, AWildcardHostIsScrapedOnLoopback) {
  auto server = MetricsServer::Start("0.0.0.0:0", std::make_shared<prometheus::Registry>());
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->address().rfind("127.0.0.1:", 0), 0u) << (*server)->address();
  absl::StatusOr<HttpReply> reply = Get((*server)->address());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
}

}  // namespace
}  // namespace indexcache
