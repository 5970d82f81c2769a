// Workers discovered through DNS: a scripted resolver stands in for a headless Service's changing
// answers, plus one real lookup of `localhost` through the system resolver.
#include "services/router/dns_discovery.h"

#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/router/router.h"
#include "tests/router/fake_workers.h"

namespace indexcache {
namespace {

using ::indexcache::testing::FakeDecodeWorker;
using ::indexcache::testing::FakePrefillWorker;
using ::indexcache::testing::WaitFor;
using ::testing::AnyOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

// A DNS server whose answers the test sets; a name it has no answer for does not exist.
class ScriptedDns {
 public:
  void Answer(const std::string& host, absl::StatusOr<std::vector<std::string>> answer) {
    std::lock_guard<std::mutex> lock(mu_);
    answers_.insert_or_assign(host, std::move(answer));
  }
  HostResolver Resolver() {
    return [this](const std::string& host) -> absl::StatusOr<std::vector<std::string>> {
      std::lock_guard<std::mutex> lock(mu_);
      ++lookups_;
      auto it = answers_.find(host);
      if (it == answers_.end()) return absl::NotFoundError(host + " does not exist");
      return it->second;
    };
  }
  int lookups() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lookups_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, absl::StatusOr<std::vector<std::string>>> answers_;
  int lookups_ = 0;
};

// "role address" of every worker the registry knows, discovered ones marked with "dns".
std::vector<std::string> Known(const WorkerRegistry& registry) {
  std::vector<std::string> known;
  for (const WorkerInfo& w : registry.Workers()) {
    known.push_back(absl::StrCat(w.role == v1::PREFILL ? "prefill " : "decode ", w.address,
                                 w.discovered ? " dns" : ""));
  }
  return known;
}

TEST(ParseDnsTargetTest, TakesHostAndPortAndRefusesTheRest) {
  auto target = ParseDnsTarget(v1::DECODE, "decode.indexcache.svc.cluster.local:50053");
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->host, "decode.indexcache.svc.cluster.local");
  EXPECT_EQ(target->port, 50053);
  EXPECT_EQ(target->role, v1::DECODE);
  auto v6 = ParseDnsTarget(v1::PREFILL, "[::1]:50052");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");

  for (const char* bad : {"decode", "decode:", "decode:0", "decode:65536", "decode:http", ":50053", "[]:50053"}) {
    auto parsed = ParseDnsTarget(v1::DECODE, bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(DnsDiscoveryTest, FollowsTheAnswersAddingNewAddressesAndRemovingVanishedOnes) {
  ScriptedDns dns;
  WorkerRegistry registry({});
  DnsDiscovery discovery(&registry,
                         {{v1::PREFILL, "prefill.svc", 50052}, {v1::DECODE, "decode.svc", 50053}},
                         dns.Resolver());
  dns.Answer("prefill.svc", std::vector<std::string>{"10.0.0.1"});
  dns.Answer("decode.svc", std::vector<std::string>{"10.0.0.2", "10.0.0.3"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill 10.0.0.1:50052 dns", "decode 10.0.0.2:50053 dns",
                                           "decode 10.0.0.3:50053 dns"));

  // A pod replaced: one address goes, another comes; the one that stays is not touched.
  dns.Answer("decode.svc", std::vector<std::string>{"10.0.0.3", "10.0.0.4"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill 10.0.0.1:50052 dns", "decode 10.0.0.3:50053 dns",
                                           "decode 10.0.0.4:50053 dns"));

  // A transient failure keeps the last answer; the name ceasing to exist (scaled to zero) empties it.
  dns.Answer("decode.svc", absl::UnavailableError("SERVFAIL"));
  discovery.Refresh();
  EXPECT_EQ(Known(registry).size(), 3u);
  dns.Answer("decode.svc", absl::NotFoundError("NXDOMAIN"));
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill 10.0.0.1:50052 dns"));
}

TEST(DnsDiscoveryTest, ADualStackWorkerIsOneWorkerUnderItsIpv4Address) {
  ScriptedDns dns;
  WorkerRegistry registry({});
  DnsDiscovery discovery(&registry,
                         {{v1::PREFILL, "prefill.svc", 50052}, {v1::DECODE, "decode.svc", 50053}},
                         dns.Resolver());
  // Two dual-stack decode pods (an A and an AAAA record each, AAAA first as RFC 6724 sorts them) and
  // an IPv6-only prefill Service.
  dns.Answer("decode.svc", std::vector<std::string>{"fd00::2", "fd00::3", "10.0.0.2", "10.0.0.3"});
  dns.Answer("prefill.svc", std::vector<std::string>{"fd00::1"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill [fd00::1]:50052 dns", "decode 10.0.0.2:50053 dns",
                                           "decode 10.0.0.3:50053 dns"));
  // The same records in another order choose the same family: nothing changes.
  dns.Answer("decode.svc", std::vector<std::string>{"10.0.0.3", "fd00::2", "10.0.0.2", "fd00::3"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill [fd00::1]:50052 dns", "decode 10.0.0.2:50053 dns",
                                           "decode 10.0.0.3:50053 dns"));
  // A pod leaves: both its records go, and with them its one entry.
  dns.Answer("decode.svc", std::vector<std::string>{"fd00::3", "10.0.0.3"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill [fd00::1]:50052 dns", "decode 10.0.0.3:50053 dns"));
}

TEST(DnsDiscoveryTest, LeavesStaticWorkersAlone) {
  ScriptedDns dns;
  WorkerRegistry registry({});
  registry.AddStatic(v1::DECODE, "10.0.0.2:50053");
  DnsDiscovery discovery(&registry, {{v1::DECODE, "decode.svc", 50053}}, dns.Resolver());
  dns.Answer("decode.svc", std::vector<std::string>{"10.0.0.2", "10.0.0.5"});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("decode 10.0.0.2:50053", "decode 10.0.0.5:50053 dns"));
  dns.Answer("decode.svc", std::vector<std::string>{});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("decode 10.0.0.2:50053"));
}

TEST(DnsDiscoveryTest, AWorkerDnsDropsKeepsServingTheRequestThatHoldsIt) {
  FakeDecodeWorker worker({.worker_id = "dns-d0", .running_sequences = 2});
  FakePrefillWorker prefill({});  // a placement takes a prefill worker too
  const std::string port = worker.address().substr(worker.address().rfind(':') + 1);
  ScriptedDns dns;
  WorkerRegistry registry({});
  registry.AddStatic(v1::PREFILL, prefill.address());
  DnsDiscovery discovery(&registry, {{v1::DECODE, "decode.svc", std::stoi(port)}}, dns.Resolver());
  dns.Answer("decode.svc", std::vector<std::string>{"127.0.0.1"});
  discovery.Refresh();
  registry.Probe();
  absl::StatusOr<Placement> placement = registry.TryPlace(Demand{1, 1}, {}, {});
  ASSERT_TRUE(placement.ok()) << placement.status();
  ASSERT_TRUE(placement->placed()) << placement->busy;
  std::unique_ptr<WorkerLease>& lease = placement->decode;
  EXPECT_EQ(lease->id(), "dns-d0");  // the probe's GetLoad named it

  dns.Answer("decode.svc", std::vector<std::string>{});
  discovery.Refresh();
  EXPECT_THAT(Known(registry), ElementsAre("prefill " + prefill.address()));
  EXPECT_EQ(registry.TryPlace(Demand{1, 1}, {}, {}).status().code(), absl::StatusCode::kUnavailable);
  // The request that picked it still reaches it over its own connection, and lets go without harm.
  grpc::ClientContext context;
  v1::WorkerLoad load;
  ASSERT_TRUE(lease->worker().decode->GetLoad(&context, v1::LoadRequest(), &load).ok());
  EXPECT_EQ(load.running_sequences(), 2);
  lease.reset();
  EXPECT_THAT(Known(registry), ElementsAre("prefill " + prefill.address()));
}

TEST(DnsDiscoveryTest, RefreshesOnItsOwnThreadUntilStopped) {
  ScriptedDns dns;
  WorkerRegistry registry({});
  DnsDiscovery discovery(&registry, {{v1::PREFILL, "prefill.svc", 50052}}, dns.Resolver());
  discovery.Start(absl::Milliseconds(10));
  dns.Answer("prefill.svc", std::vector<std::string>{"10.0.0.1"});
  EXPECT_TRUE(WaitFor([&] { return registry.Workers().size() == 1; }));
  discovery.Stop();
  const int lookups = dns.lookups();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(dns.lookups(), lookups);
}

TEST(ResolveHostTest, ResolvesLocalhostThroughTheSystemResolver) {
  auto addresses = ResolveHost("localhost");
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_THAT(*addresses, Contains(AnyOf("127.0.0.1", "::1")));
  EXPECT_FALSE(ResolveHost("no-such-host.invalid").ok());  // RFC 6761: .invalid never resolves
}

TEST(RouterDnsTest, ARouterFindsAWorkerByName) {
  FakeDecodeWorker worker({.worker_id = "dns-d1"});
  const std::string port = worker.address().substr(worker.address().rfind(':') + 1);
  RouterOptions options;
  options.model_dir = kModelDir;
  options.cluster_token = ::indexcache::testing::TestClusterToken();
  options.decode_dns = {"localhost:" + port};
  options.dns_interval = absl::Milliseconds(50);
  Router router(options);
  auto address = router.Start();
  ASSERT_TRUE(address.ok()) << address.status();
  // localhost may resolve to ::1 too, where nothing listens: that entry stays out of rotation.
  EXPECT_TRUE(WaitFor([&] {
    for (const WorkerInfo& w : router.Pool()) {
      if (w.id == "dns-d1" && w.address == "127.0.0.1:" + port && w.discovered) return true;
    }
    return false;
  }));
}

TEST(RouterDnsTest, RefusesAMalformedName) {
  RouterOptions options;
  options.model_dir = kModelDir;
  options.cluster_token = ::indexcache::testing::TestClusterToken();
  options.prefill_dns = {"prefill.svc"};
  Router router(options);
  auto address = router.Start();
  EXPECT_EQ(address.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(address.status().message(), HasSubstr("prefill.svc"));
}

}  // namespace
}  // namespace indexcache
