// Workers found through DNS: each `--prefill-dns` / `--decode-dns` name (a Kubernetes headless Service,
// whose name resolves to the addresses of its ready pods) is resolved every interval, A and AAAA
// records alike. A name's answer keeps one address family — IPv4 when it has any, else IPv6 — so that
// a dual-stack worker, under both records, is one worker and not two. An address that appears joins
// the registry as a probed worker (it enters rotation at its first passing health check); one that
// disappears leaves it. A request in flight on a worker that
// left keeps its connection and ends as it would had the worker died.
//
// A lookup that fails for a transient reason (no answer, server failure) changes nothing: the last
// good answer stands, so a DNS hiccup does not empty the pool. A name that authoritatively has no
// addresses (a Service scaled to zero) does empty its share of the pool.
//
//   DnsDiscovery discovery(&registry, {{v1::DECODE, "decode.ns.svc", 50053}});
//   discovery.Refresh();                    // once, before serving
//   discovery.Start(absl::Seconds(5));      // then on a background thread
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/router/worker_registry.h"

namespace indexcache {

// One name to watch: every address it resolves to, at `port`, is a worker of `role`.
struct DnsTarget {
  v1::WorkerRole role = v1::WORKER_ROLE_UNSPECIFIED;
  std::string host;
  int port = 0;
};

// "decode.ns.svc.cluster.local:50053" (or "[::1]:50053") → a target; INVALID_ARGUMENT when the port
// is missing or out of range.
absl::StatusOr<DnsTarget> ParseDnsTarget(v1::WorkerRole role, const std::string& host_port);

// The IP addresses `host` resolves to, as text ("10.0.0.5", "fd00::5"), sorted and without repeats.
// NOT_FOUND when the name authoritatively has none; UNAVAILABLE for a transient failure.
using HostResolver = std::function<absl::StatusOr<std::vector<std::string>>(const std::string& host)>;

// The system resolver (getaddrinfo: /etc/hosts, then DNS per nsswitch.conf). Blocks.
absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host);

class DnsDiscovery {
 public:
  DnsDiscovery(WorkerRegistry* registry, std::vector<DnsTarget> targets, HostResolver resolver = ResolveHost);
  ~DnsDiscovery();  // stops the background thread
  DnsDiscovery(const DnsDiscovery&) = delete;
  DnsDiscovery& operator=(const DnsDiscovery&) = delete;

  // Resolves every target once and brings the registry in line with the answers.
  void Refresh();
  // Refreshes every `interval` on a background thread until destruction or Stop().
  void Start(absl::Duration interval);
  void Stop();

 private:
  void Loop(absl::Duration interval);

  WorkerRegistry* const registry_;
  const std::vector<DnsTarget> targets_;
  const HostResolver resolver_;
  std::mutex refresh_mu_;  // one Refresh at a time; guards answers_ and added_
  // Per target, the worker addresses ("ip:port") of its last good answer; nullopt before the first.
  std::vector<std::optional<std::set<std::string>>> answers_;
  // Every address this discovery put in the registry, with its role.
  std::map<std::string, v1::WorkerRole> added_;

  std::mutex mu_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace indexcache
