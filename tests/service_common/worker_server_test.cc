// WorkerServer: the lifecycle both workers rely on, around a service whose calls the test holds open.
// Truths: what grpc.health.v1 answers, what a recording router receives and when, whether a call
// held open is finished or aborted, and the order of drain, listener stop and server stop.
#include "services/common/worker_server.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "services/common/status_conversion.h"
#include "tests/metrics/http_test_client.h"
#include "tests/service_common/worker_peers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::FakeRouter;
using ::indexcache::testing::HealthStatus;
using ::indexcache::testing::ServeOnLoopback;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int kServing = 1;
constexpr int kNotServing = 2;

// A worker's own service cut down to what the lifecycle sees: Prefill calls that stay open until the
// test releases them (or StopAll ends them), refused once draining; Load counts its callers.
class HeldService final : public v1::PrefillWorker::Service, public DrainableService {
 public:
  explicit HeldService(prometheus::Gauge* loads = nullptr) : loads_gauge_(loads) {}

  grpc::Status Prefill(grpc::ServerContext*, const v1::PrefillRequest*,
                       grpc::ServerWriter<v1::PrefillResponse>*) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
    ++in_flight_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return released_ || !stopped_.ok(); });
    --in_flight_;
    changed_.notify_all();
    return ToGrpcStatus(stopped_);
  }
  grpc::Status GetLoad(grpc::ServerContext*, const v1::LoadRequest*, v1::WorkerLoad* response) override {
    *response = Load();
    return grpc::Status::OK;
  }

  void Ready(const std::string& worker_id, const std::string& address) override {
    std::lock_guard<std::mutex> lock(mu_);
    worker_id_ = worker_id;
    address_ = address;
  }
  v1::WorkerLoad Load() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++loads_;
    if (loads_gauge_ != nullptr) loads_gauge_->Set(static_cast<double>(loads_));
    v1::WorkerLoad load;
    load.set_worker_id(worker_id_);
    load.set_queued_requests(in_flight_);
    load.set_draining(draining_);
    return load;
  }
  // It keeps no prefix cache: nothing to report, nothing ever changes.
  void ReportCachedBlocks(const v1::CachedBlocksCursor&, v1::WorkerLoad*) override {}
  void OnCachedBlocksChanged(std::function<void()>) override {}
  void StartDraining() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  bool WaitIdle(absl::Time deadline) override {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_until(lock, absl::ToChronoTime(deadline), [&] { return in_flight_ == 0; });
  }
  void StopAll(const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = why;
    changed_.notify_all();
  }

  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    changed_.notify_all();
  }
  // Waits (up to 10 s) until `n` calls are open.
  bool WaitForInFlight(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(10), [&] { return in_flight_ == n; });
  }
  absl::Status stopped() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopped_;
  }
  std::pair<std::string, std::string> ready() {
    std::lock_guard<std::mutex> lock(mu_);
    return {worker_id_, address_};
  }

 private:
  prometheus::Gauge* const loads_gauge_;
  std::mutex mu_;
  std::condition_variable changed_;
  int in_flight_ = 0;          // guarded by mu_
  bool draining_ = false;      // guarded by mu_
  bool released_ = false;      // guarded by mu_
  absl::Status stopped_;       // guarded by mu_: StopAll's reason, OK until then
  int64_t loads_ = 0;          // guarded by mu_
  std::string worker_id_;      // guarded by mu_
  std::string address_;        // guarded by mu_
};

class WorkerServerTest : public ::testing::Test {
 protected:
  WorkerServer::Served Serve(v1::WorkerRole role = v1::PREFILL) {
    WorkerServer::Served served;
    served.role = role;
    served.service = &service_;
    served.lifecycle = &service_;
    served.service_name = v1::PrefillWorker::service_full_name();
    served.stop_listeners = [this] { ++listeners_stopped_; };
    served.metrics = registry_;
    return served;
  }

  // One Prefill call on its own thread; its status once it returns.
  std::future<grpc::Status> CallAsync(const std::string& address) {
    return std::async(std::launch::async, [address] {
      auto stub = v1::PrefillWorker::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::PrefillRequest request;
      auto reader = stub->Prefill(&context, request);
      for (v1::PrefillResponse response; reader->Read(&response);) {
      }
      return reader->Finish();
    });
  }

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Gauge& loads_ =
      prometheus::BuildGauge().Name("test_loads").Help("Load calls").Register(*registry_).Add({});
  HeldService service_{&loads_};
  std::atomic<int> listeners_stopped_{0};
};

TEST_F(WorkerServerTest, StartsServingUnderAnAddressOthersCanDial) {
  WorkerServerOptions options;
  options.listen_address = "0.0.0.0:0";
  WorkerServer server(options);
  absl::StatusOr<std::string> address = server.Start(Serve());
  ASSERT_TRUE(address.ok()) << address.status();
  // A wildcard is not an address to call: the loopback address stands in for it.
  EXPECT_THAT(*address, StartsWith("127.0.0.1:"));
  EXPECT_NE(*address, "127.0.0.1:0");
  EXPECT_EQ(server.address(), *address);
  EXPECT_EQ(server.worker_id(), "prefill@" + *address);
  EXPECT_EQ(service_.ready(), std::make_pair(server.worker_id(), *address));
  EXPECT_EQ(HealthStatus(*address), kServing);
  EXPECT_EQ(HealthStatus(*address, "indexcache.v1.PrefillWorker"), kServing);
  EXPECT_EQ(server.Load().worker_id(), server.worker_id());

  // Once only; the second caller's listeners are stopped, the first's keep serving.
  absl::StatusOr<std::string> again = server.Start(Serve());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(again.status().message(), "the prefill worker is already started");
  EXPECT_EQ(listeners_stopped_, 1);
  EXPECT_EQ(HealthStatus(*address), kServing);
}

TEST_F(WorkerServerTest, AdvertisedAddressAndDecodeRoleNameTheWorker) {
  WorkerServerOptions options;
  options.advertise_address = "10.0.0.7:5000";
  WorkerServer server(options);
  absl::StatusOr<std::string> address = server.Start(Serve(v1::DECODE));
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(*address, "10.0.0.7:5000");
  EXPECT_EQ(server.worker_id(), "decode@10.0.0.7:5000");
}

TEST_F(WorkerServerTest, DrainTellsTheRouterAtOnceFinishesCallsInFlightThenStops) {
  FakeRouter router;
  std::string router_address;
  std::unique_ptr<grpc::Server> router_server = ServeOnLoopback(&router, &router_address);
  WorkerServerOptions options;
  options.router_address = router_address;
  options.worker_id = "w0";
  // Far longer than the test: a heartbeat that arrives is the one Drain sends at once.
  options.heartbeat_interval = absl::Minutes(10);
  WorkerServer server(options);
  absl::StatusOr<std::string> address = server.Start(Serve());
  ASSERT_TRUE(address.ok()) << address.status();
  ASSERT_TRUE(router.WaitFor(1, 0));
  const v1::RegisterRequest self = router.registrations()[0];
  EXPECT_EQ(self.worker_id(), "w0");
  EXPECT_EQ(self.role(), v1::PREFILL);
  EXPECT_EQ(self.address(), *address);
  EXPECT_TRUE(self.has_load());  // the router admits by capacity before the first heartbeat
  EXPECT_TRUE(router.heartbeats().empty());

  std::future<grpc::Status> held = CallAsync(*address);
  ASSERT_TRUE(service_.WaitForInFlight(1));
  std::future<void> drain = std::async(std::launch::async, [&] { server.Drain(); });

  ASSERT_TRUE(router.WaitFor(1, 1));
  EXPECT_TRUE(router.heartbeats()[0].draining());
  EXPECT_EQ(router.heartbeats()[0].queued_requests(), 1);
  EXPECT_EQ(HealthStatus(*address), kNotServing);
  EXPECT_EQ(HealthStatus(*address, "indexcache.v1.PrefillWorker"), kNotServing);
  // The call in flight holds the drain: nothing stopped yet.
  EXPECT_EQ(drain.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  EXPECT_EQ(listeners_stopped_, 0);

  service_.Release();
  EXPECT_TRUE(held.get().ok());
  drain.get();
  EXPECT_EQ(listeners_stopped_, 1);
  server.Wait();  // returns: the server stopped
  EXPECT_EQ(HealthStatus(*address), -1);
  server.Drain();  // idempotent
  EXPECT_EQ(listeners_stopped_, 1);
  router_server->Shutdown();
}

TEST_F(WorkerServerTest, DrainEndsCallsStillRunningAfterTheGraceUnavailable) {
  WorkerServerOptions options;
  options.worker_id = "w1";
  options.drain_grace = absl::Milliseconds(300);
  WorkerServer server(options);
  absl::StatusOr<std::string> address = server.Start(Serve());
  ASSERT_TRUE(address.ok()) << address.status();
  std::future<grpc::Status> held = CallAsync(*address);
  ASSERT_TRUE(service_.WaitForInFlight(1));

  const absl::Time start = absl::Now();
  server.Drain();  // the call is never released: the grace ends it
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, options.drain_grace);
  EXPECT_LT(took, options.drain_grace + absl::Seconds(5));
  const absl::Status why = service_.stopped();
  EXPECT_EQ(why.code(), absl::StatusCode::kUnavailable);  // the router migrates what ends so
  EXPECT_THAT(why.message(), HasSubstr("prefill worker w1 is shutting down"));
  EXPECT_THAT(why.message(), HasSubstr("300ms drain grace"));
  const grpc::Status status = held.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(listeners_stopped_, 1);
}

TEST_F(WorkerServerTest, DestructionWithoutDrainAbortsCallsInFlight) {
  auto server = std::make_unique<WorkerServer>(WorkerServerOptions());
  absl::StatusOr<std::string> address = server->Start(Serve());
  ASSERT_TRUE(address.ok()) << address.status();
  std::future<grpc::Status> held = CallAsync(*address);
  ASSERT_TRUE(service_.WaitForInFlight(1));
  server.reset();
  const absl::Status why = service_.stopped();
  EXPECT_EQ(why.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(why.message(), "the prefill worker is shutting down");
  // The call ends either with that status or, when the server's immediate shutdown cancels it first,
  // UNAVAILABLE: never OK, never hanging.
  const grpc::Status status = held.get();
  EXPECT_THAT(status.error_code(), ::testing::AnyOf(grpc::StatusCode::ABORTED, grpc::StatusCode::UNAVAILABLE));
  EXPECT_EQ(listeners_stopped_, 1);
}

TEST_F(WorkerServerTest, EveryMetricsScrapeReadsTheLoadFirst) {
  WorkerServerOptions options;
  options.metrics_listen_address = "127.0.0.1:0";
  WorkerServer server(options);
  ASSERT_TRUE(server.Start(Serve()).ok());
  ASSERT_FALSE(server.metrics_address().empty());
  for (const char* want : {"test_loads 1", "test_loads 2"}) {
    absl::StatusOr<::indexcache::testing::HttpReply> reply = ::indexcache::testing::Get(server.metrics_address());
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->status, 200);
    EXPECT_THAT(reply->body, HasSubstr(want));
  }
}

TEST_F(WorkerServerTest, StartFailuresSayWhyAndStopTheWorkersListeners) {
  {
    WorkerServerOptions options;
    options.listen_address = "192.0.2.1:0";  // TEST-NET-1: no interface here has it
    WorkerServer server(options);
    absl::StatusOr<std::string> address = server.Start(Serve());
    EXPECT_EQ(address.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(address.status().message(), HasSubstr("prefill worker cannot listen on 192.0.2.1:0"));
    EXPECT_EQ(listeners_stopped_, 1);
    server.Drain();  // never started: nothing to do
    server.Wait();
  }
  {
    WorkerServerOptions options;
    options.metrics_listen_address = "no-port";
    WorkerServer server(options);
    EXPECT_FALSE(server.Start(Serve()).ok());
    EXPECT_EQ(listeners_stopped_, 2);
  }
  {
    WorkerServer server{WorkerServerOptions()};
    WorkerServer::Served served = Serve();
    served.lifecycle = nullptr;
    EXPECT_EQ(server.Start(std::move(served)).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(listeners_stopped_, 3);
  }
  WorkerServerOptions no_heartbeat;
  no_heartbeat.heartbeat_interval = absl::ZeroDuration();
  EXPECT_EQ(ValidateWorkerServerOptions(no_heartbeat).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace indexcache
