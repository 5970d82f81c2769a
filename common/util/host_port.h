// "host:port" addresses as the services' flags take them.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace indexcache {

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
// Splits "ip:port" (IPv6 in brackets: "[::1]:port").
absl::StatusOr<HostPort> SplitHostPort(const std::string& address);

// Whether a listener on "host:port" takes connections from loopback only (127.0.0.0/8, [::1],
// localhost): where plaintext is not overheard. A wildcard or empty host is every interface.
bool IsLoopbackListenAddress(const std::string& listen_address);

}  // namespace indexcache
