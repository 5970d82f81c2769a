// Workers registering with the router: heartbeats, timeouts, and the pool's model identity.
#include <thread>

#include "common/auth/grpc_token.h"
#include "common/model/model_fingerprint.h"
#include "common/safetensors/weight_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/router/router.h"
#include "tests/router/fake_workers.h"
#include "tests/service_common/worker_peers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::DecodeScript;
using ::indexcache::testing::FakeDecodeWorker;
using ::indexcache::testing::WaitFor;
using ::testing::HasSubstr;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

std::string BundledFingerprint() {
  auto store = WeightStore::Open(kModelDir);
  EXPECT_TRUE(store.ok()) << store.status();
  auto fingerprint = ModelFingerprint(kModelDir, *store);
  EXPECT_TRUE(fingerprint.ok()) << fingerprint.status();
  return *fingerprint;
}

class RegistryClient {
 public:
  // `router` is the router's internal address; calls carry `token` (the tests' own by default).
  explicit RegistryClient(const std::string& router,
                          const ClusterToken& token = ::indexcache::testing::TestClusterToken())
      : stub_(v1::Registry::NewStub(InternalChannel(router, token))) {}

  grpc::Status Register(const FakeDecodeWorker& worker, const std::string& fingerprint, const std::string& pattern,
                        v1::RegisterResponse* response = nullptr) {
    v1::RegisterRequest request;
    request.set_worker_id(worker.id());
    request.set_role(v1::DECODE);
    request.set_address(worker.address());
    request.set_model_fingerprint(fingerprint);
    request.set_index_pattern(pattern);
    grpc::ClientContext context;
    v1::RegisterResponse ignored;
    return stub_->Register(&context, request, response ? response : &ignored);
  }

  bool Heartbeat(const FakeDecodeWorker& worker) {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    *request.mutable_load() = worker.Load();
    v1::HeartbeatResponse response;
    EXPECT_TRUE(stub_->Heartbeat(&context, request, &response).ok());
    return response.known();
  }

 private:
  std::unique_ptr<v1::Registry::Stub> stub_;
};

bool InPool(const Router& router, const std::string& id) {
  for (const WorkerInfo& w : router.Pool()) {
    if (w.id == id) return true;
  }
  return false;
}

RouterOptions Options() {
  RouterOptions o;
  o.model_dir = kModelDir;
  o.cluster_token = ::indexcache::testing::TestClusterToken();
  o.heartbeat_timeout = absl::Milliseconds(600);
  o.health_check_interval = absl::Milliseconds(50);
  return o;
}

TEST(WorkerRegistryTest, HeartbeatsKeepAWorkerSilenceRemovesItRegisteringBringsItBack) {
  FakeDecodeWorker worker({.worker_id = "reg-d0", .running_sequences = 3});
  Router router(Options());
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  RegistryClient registry(router.internal_address());
  const std::string pattern = "FSSFSSFS";

  v1::RegisterResponse response;
  ASSERT_TRUE(registry.Register(worker, BundledFingerprint(), pattern, &response).ok());
  EXPECT_DOUBLE_EQ(response.heartbeat_interval_seconds(), 0.2);  // a third of the timeout
  EXPECT_TRUE(InPool(router, "reg-d0"));

  // Heartbeats for twice the timeout keep it, and carry its load.
  const absl::Time until = absl::Now() + absl::Milliseconds(1200);
  absl::Time last_heartbeat;
  while (absl::Now() < until) {
    last_heartbeat = absl::Now();  // the router stamps it on arrival, a little later
    ASSERT_TRUE(registry.Heartbeat(worker));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(InPool(router, "reg-d0"));
  EXPECT_EQ(router.Pool()[0].load.running_sequences(), 3);

  // Silence: gone after the timeout, not before.
  ASSERT_TRUE(WaitFor([&] { return !InPool(router, "reg-d0"); }, absl::Seconds(5)));
  EXPECT_GE(absl::Now() - last_heartbeat, absl::Milliseconds(600));
  EXPECT_FALSE(registry.Heartbeat(worker));  // "register again"

  ASSERT_TRUE(registry.Register(worker, BundledFingerprint(), pattern).ok());
  EXPECT_TRUE(InPool(router, "reg-d0"));
}

TEST(WorkerRegistryTest, AWorkerFailingHealthChecksLeavesThePool) {
  FakeDecodeWorker worker({.worker_id = "reg-d1"});
  RouterOptions options = Options();
  options.heartbeat_timeout = absl::Seconds(60);  // only the health checks can notice
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  RegistryClient registry(router.internal_address());
  ASSERT_TRUE(registry.Register(worker, BundledFingerprint(), "FSSFSSFS").ok());
  ASSERT_TRUE(InPool(router, "reg-d1"));
  worker.Kill();
  EXPECT_TRUE(WaitFor([&] { return !InPool(router, "reg-d1"); }, absl::Seconds(5)));
}

TEST(WorkerRegistryTest, RefusesAWorkerOfAnotherModelOrPattern) {
  FakeDecodeWorker first({.worker_id = "first"});
  FakeDecodeWorker stranger({.worker_id = "stranger"});
  Router router(Options());
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  RegistryClient registry(router.internal_address());
  const std::string fingerprint = BundledFingerprint();

  // The router computed the bundled model's fingerprint itself.
  const grpc::Status other_model = registry.Register(stranger, "0123456789abcdef", "FSSFSSFS");
  EXPECT_EQ(other_model.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(other_model.error_message(), HasSubstr("0123456789abcdef"));
  EXPECT_THAT(other_model.error_message(), HasSubstr(fingerprint));
  EXPECT_THAT(other_model.error_message(), HasSubstr("stranger"));

  // The first registered worker sets the pool's pattern; another pattern is refused after it.
  ASSERT_TRUE(registry.Register(first, fingerprint, "FSSFSSFS").ok());
  const grpc::Status other_pattern = registry.Register(stranger, fingerprint, "FFFFFFFF");
  EXPECT_EQ(other_pattern.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(other_pattern.error_message(), HasSubstr("FFFFFFFF"));
  EXPECT_THAT(other_pattern.error_message(), HasSubstr("FSSFSSFS"));
  EXPECT_FALSE(InPool(router, "stranger"));
  EXPECT_TRUE(registry.Register(stranger, fingerprint, "FSSFSSFS").ok());

  const grpc::Status no_role = [&] {
    v1::RegisterRequest request;
    request.set_worker_id("x");
    request.set_address("127.0.0.1:1");
    grpc::ClientContext context;
    v1::RegisterResponse response;
    return v1::Registry::NewStub(InternalChannel(router.internal_address(), ::indexcache::testing::TestClusterToken()))
        ->Register(&context, request, &response);
  }();
  EXPECT_EQ(no_role.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(WorkerRegistryTest, TheRoutersPatternOptionIsEnforcedFromTheStart) {
  FakeDecodeWorker worker({.worker_id = "w"});
  RouterOptions options = Options();
  options.index_pattern = "FSFSFSFS";
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  RegistryClient registry(router.internal_address());
  EXPECT_EQ(registry.Register(worker, BundledFingerprint(), "FSSFSSFS").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(registry.Register(worker, BundledFingerprint(), "FSFSFSFS").ok());
}

// Issue 13's attacks on the Registry: a rogue worker registering, or a forged Heartbeat{draining}
// emptying the pool. Each must be refused, and the pool left as it was.
TEST(WorkerRegistryAuthTest, TheRegistryIsNotOnThePublicPort) {
  FakeDecodeWorker rogue({.worker_id = "rogue"});
  Router router(Options());
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  ASSERT_NE(router.internal_address(), *address);
  // Even with the token: the public port serves no Registry.
  RegistryClient on_public_port(*address);
  EXPECT_EQ(on_public_port.Register(rogue, BundledFingerprint(), "FSSFSSFS").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(InPool(router, "rogue"));
}

TEST(WorkerRegistryAuthTest, RegistrationAndHeartbeatsWithoutTheTokenAreUnauthenticated) {
  FakeDecodeWorker worker({.worker_id = "honest"});
  FakeDecodeWorker rogue({.worker_id = "rogue"});
  Router router(Options());
  ASSERT_TRUE(router.Start().ok());
  RegistryClient honest(router.internal_address());
  ASSERT_TRUE(honest.Register(worker, BundledFingerprint(), "FSSFSSFS").ok());
  ASSERT_TRUE(WaitFor([&] { return InPool(router, "honest"); }));

  const ClusterToken wrong = *ClusterToken::FromSecret(std::string(64, 'f'));
  for (const ClusterToken& token : {ClusterToken(), wrong}) {
    RegistryClient attacker(router.internal_address(), token);
    const grpc::Status registered = attacker.Register(rogue, BundledFingerprint(), "FSSFSSFS");
    EXPECT_EQ(registered.error_code(), grpc::StatusCode::UNAUTHENTICATED) << registered.error_message();
    // Registering under the honest worker's id changes nothing either.
    EXPECT_EQ(attacker.Register(worker, BundledFingerprint(), "FSSFSSFS").error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    // A forged Heartbeat{draining} for the honest worker.
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    *request.mutable_load() = worker.Load();
    request.mutable_load()->set_draining(true);
    v1::HeartbeatResponse response;
    EXPECT_EQ(v1::Registry::NewStub(InternalChannel(router.internal_address(), token))
                  ->Heartbeat(&context, request, &response)
                  .error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_FALSE(InPool(router, "rogue"));
  EXPECT_TRUE(InPool(router, "honest"));
}

// Every method internal.proto declares for the Registry, so a method added without its
// CheckCallToken fails here.
TEST(WorkerRegistryAuthTest, EveryRegistryMethodWithoutTheTokenIsUnauthenticated) {
  Router router(Options());
  ASSERT_TRUE(router.Start().ok());
  const ClusterToken wrong = *ClusterToken::FromSecret(std::string(64, 'f'));
  for (const ClusterToken& token : {ClusterToken(), wrong}) {
    const auto statuses = ::indexcache::testing::CallEveryMethod(router.internal_address(),
                                                                 v1::Registry::service_full_name(), token);
    ASSERT_FALSE(statuses.empty());
    for (const auto& [method, status] : statuses) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method;
    }
  }
}

TEST(WorkerRegistryAuthTest, ARouterWithoutATokenStartsOnlyWhenToldToBeInsecure) {
  RouterOptions options = Options();
  options.cluster_token = ClusterToken();
  Router refused(options);
  const absl::StatusOr<std::string> address = refused.Start();
  EXPECT_EQ(address.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(address.status().message(), HasSubstr("--cluster-token-file"));
  options.insecure_internal_plane = true;
  Router insecure(options);
  EXPECT_TRUE(insecure.Start().ok());
}

}  // namespace
}  // namespace indexcache
