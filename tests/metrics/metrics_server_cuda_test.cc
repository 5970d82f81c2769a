// The case that made us write our own endpoint: prometheus-cpp's civetweb Exposer failed to start in
// a process that had loaded libcublas. This binary links CUDA::cublas and calls into it (no GPU
// needed to ask for its version), checks that libcublas really is mapped, then serves and scrapes
// /metrics. Built only when the CUDA toolkit is found.
#include <fstream>
#include <sstream>
#include <string>

#include <cublas_api.h>

#include "common/metrics/metrics_server.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "tests/metrics/http_test_client.h"

namespace indexcache {
namespace {

std::string MappedFiles() {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  return text.str();
}

TEST(MetricsServerCudaTest, ServesMetricsInAProcessThatLoadedCublas) {
  int major = -1;
  ASSERT_EQ(cublasGetProperty(MAJOR_VERSION, &major), CUBLAS_STATUS_SUCCESS);
  EXPECT_GT(major, 0);
  ASSERT_NE(MappedFiles().find("libcublas"), std::string::npos) << "libcublas is not loaded in this process";

  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("cublas_major_version").Help("h").Register(*registry).Add({}).Increment(major);
  auto server = MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<testing::HttpReply> reply = testing::Get((*server)->address());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->status, 200);
  EXPECT_NE(reply->body.find("cublas_major_version " + std::to_string(major)), std::string::npos) << reply->body;
}

}  // namespace
}  // namespace indexcache
