// `cluster up` with the router's TLS identity (--tls-cert-file, --tls-key-file): its readiness check
// gets through over TLS, `indexcache client generate --tls-ca-file` and the SDK with the CA are
// served, and a client without TLS is not.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_common.h"
#include "tests/test_certificates.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using ::indexcache::testing::IssueCertificate;
using ::indexcache::testing::MakeCertificateAuthority;
using ::indexcache::testing::PemIdentity;
using ::indexcache::testing::WriteTestFile;

// A model with a tokenizer, so that `client generate --prompt` works.
const std::string kTextModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

// The exit status and stdout of `command` (stderr passes through).
std::pair<int, std::string> RunShell(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, out};
  char buffer[4096];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  return {pclose(pipe), out};
}

TEST(PublicTlsTest, ClusterUpServesTlsToClientsTrustingTheCa) {
  const PemIdentity ca = MakeCertificateAuthority("indexcache test CA");
  const PemIdentity router = IssueCertificate(ca, "router");
  const std::string ca_file = WriteTestFile("ca.crt", ca.certificate);
  auto cluster = cli::ChildProcess::Spawn(
      "cluster", {e2e::kBinary, "cluster", "up", "--model", kTextModel, "--threads", "1", "--tls-cert-file",
                  WriteTestFile("router.crt", router.certificate), "--tls-key-file",
                  WriteTestFile("router.key", router.private_key), "--tls-ca-file", ca_file});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto address = (*cluster)->WaitLine("ready ", absl::Seconds(180));
  ASSERT_TRUE(address.ok()) << "the readiness check did not get through over TLS: " << address.status();

  const std::string generate = e2e::kBinary + " client generate --router " + *address +
                               " --prompt 'The river ran' --max-new-tokens 4 --temperature 0 --json";
  const auto [code, out] = RunShell(generate + " --tls-ca-file " + ca_file);
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["generated_tokens"], 4);
  EXPECT_NE(RunShell(generate + " --timeout 5").first, 0) << "a plaintext client is refused";

  client::ClientOptions options;
  options.default_timeout = absl::Seconds(10);
  options.tls.emplace().ca_certificates_file = ca_file;
  auto with_ca = client::Client::Connect(*address, options);
  ASSERT_TRUE(with_ca.ok()) << with_ca.status();
  EXPECT_TRUE(with_ca->GetModelInfo().ok());

  (*cluster)->Signal(SIGTERM);
  (*cluster)->Stop(absl::Seconds(60));
}

}  // namespace
}  // namespace indexcache
