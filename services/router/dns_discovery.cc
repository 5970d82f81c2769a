#include "services/router/dns_discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/logging.h"

namespace indexcache {
namespace {

const char* RoleName(v1::WorkerRole role) { return role == v1::PREFILL ? "prefill" : "decode"; }

// "10.0.0.5" + 50053 → "10.0.0.5:50053"; an IPv6 address is bracketed, as gRPC targets want.
std::string WorkerAddress(const std::string& ip, int port) {
  return ip.find(':') == std::string::npos ? absl::StrCat(ip, ":", port) : absl::StrCat("[", ip, "]:", port);
}

bool IsIpv6(const std::string& ip) { return ip.find(':') != std::string::npos; }

// A dual-stack worker answers under an A and an AAAA record: two addresses, one process. As two pool
// entries it would be probed twice and picked twice as often as its load says. One name's answer
// therefore keeps one family, IPv4 whenever it has any address of it (the family of the services'
// default addresses), else IPv6: the same choice at every refresh, whatever order the records come in.
// Returns how many addresses of the other family were left out.
size_t KeepOneFamily(std::vector<std::string>& ips) {
  const bool any_ipv4 = std::any_of(ips.begin(), ips.end(), [](const std::string& ip) { return !IsIpv6(ip); });
  if (!any_ipv4) return 0;
  const size_t before = ips.size();
  std::erase_if(ips, IsIpv6);
  return before - ips.size();
}

}  // namespace

absl::StatusOr<DnsTarget> ParseDnsTarget(v1::WorkerRole role, const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(host_port.substr(colon + 1), &port) || port < 1 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host_port, "' is not HOST:PORT (a DNS name and the workers' gRPC port, 1-65535)"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' names no host"));
  return DnsTarget{role, std::move(host), port};
}

absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;  // A and AAAA
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const int error = getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (error == EAI_NONAME || error == EAI_NODATA) {
    return absl::NotFoundError(absl::StrCat(host, " has no address: ", gai_strerror(error)));
  }
  if (error != 0) {
    return absl::UnavailableError(absl::StrCat("resolving ", host, ": ", gai_strerror(error)));
  }
  std::vector<std::string> addresses;
  for (const addrinfo* a = result; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    const void* raw = a->ai_family == AF_INET
                          ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr)
                          : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr);
    if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) && inet_ntop(a->ai_family, raw, text, sizeof(text))) {
      addresses.emplace_back(text);
    }
  }
  freeaddrinfo(result);
  std::sort(addresses.begin(), addresses.end());
  addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
  if (addresses.empty()) return absl::NotFoundError(absl::StrCat(host, " has no IPv4 or IPv6 address"));
  return addresses;
}

DnsDiscovery::DnsDiscovery(WorkerRegistry* registry, std::vector<DnsTarget> targets, HostResolver resolver)
    : registry_(registry), targets_(std::move(targets)), resolver_(std::move(resolver)), answers_(targets_.size()) {}

DnsDiscovery::~DnsDiscovery() { Stop(); }

void DnsDiscovery::Refresh() {
  std::lock_guard<std::mutex> refresh_lock(refresh_mu_);
  for (size_t i = 0; i < targets_.size(); ++i) {
    const DnsTarget& target = targets_[i];
    absl::StatusOr<std::vector<std::string>> ips = resolver_(target.host);
    std::set<std::string> answer;
    size_t ipv6_left_out = 0;
    if (ips.ok()) {
      ipv6_left_out = KeepOneFamily(*ips);
      for (const std::string& ip : *ips) answer.insert(WorkerAddress(ip, target.port));
    } else if (!absl::IsNotFound(ips.status())) {
      IC_LOG(Warning) << "keeping the last " << RoleName(target.role) << " workers of " << target.host
                      << ": " << ips.status().message();
      continue;
    }
    if (answer != answers_[i]) {
      // A name with no address is worth a warning: a Service scaled to zero, or a wrong name.
      if (answer.empty()) {
        IC_LOG(Warning) << target.host << " resolves to no " << RoleName(target.role) << " worker"
                        << (ips.ok() ? std::string() : absl::StrCat(": ", ips.status().message()));
      } else {
        IC_LOG(Info) << target.host << " now resolves to " << answer.size() << " " << RoleName(target.role)
                     << " worker" << (answer.size() == 1 ? "" : "s") << ": " << absl::StrJoin(answer, ", ")
                     << (ipv6_left_out == 0
                             ? ""
                             : absl::StrCat(" (", ipv6_left_out, " IPv6 address", ipv6_left_out == 1 ? "" : "es",
                                            " of the same name left out: one entry per dual-stack worker)"));
        if (ipv6_left_out > answer.size()) {
          IC_LOG(Warning) << target.host << " has more IPv6 than IPv4 addresses: workers with only an IPv6 "
                          << "address are left out of the pool (one family per name)";
        }
      }
      answers_[i] = std::move(answer);
    }
  }
  // The union over targets: two names may share an address, which stays while either names it.
  std::map<std::string, v1::WorkerRole> wanted;
  for (size_t i = 0; i < targets_.size(); ++i) {
    if (!answers_[i].has_value()) continue;
    for (const std::string& address : *answers_[i]) wanted.emplace(address, targets_[i].role);
  }
  for (auto it = added_.begin(); it != added_.end();) {
    if (wanted.contains(it->first)) {
      ++it;
      continue;
    }
    registry_->RemoveDiscovered(it->first, "its address left DNS");
    it = added_.erase(it);
  }
  for (const auto& [address, role] : wanted) {
    if (added_.contains(address)) continue;
    registry_->AddDiscovered(role, address);
    added_.emplace(address, role);
  }
}

void DnsDiscovery::Start(absl::Duration interval) {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread(&DnsDiscovery::Loop, this, interval);
}

void DnsDiscovery::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DnsDiscovery::Loop(absl::Duration interval) {
  const auto period = absl::ToChronoNanoseconds(interval);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_changed_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    Refresh();
    lock.lock();
  }
}

}  // namespace indexcache
