#include "common/util/host_port.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace indexcache {

absl::StatusOr<HostPort> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not an ip:port address"));
  }
  HostPort result;
  result.host = address.substr(0, colon);
  if (result.host.size() >= 2 && result.host.front() == '[' && result.host.back() == ']') {
    result.host = result.host.substr(1, result.host.size() - 2);
  }
  result.port = static_cast<uint16_t>(port);
  return result;
}

bool IsLoopbackListenAddress(const std::string& listen_address) {
  const std::string host = listen_address.substr(0, listen_address.rfind(':'));
  return absl::StartsWith(host, "127.") || host == "[::1]" || host == "localhost";
}

}  // namespace indexcache
