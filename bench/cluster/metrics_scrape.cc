#include "bench/cluster/metrics_scrape.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace indexcache::bench {

absl::StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("not host:port: ", host_port));
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host_port));
  }
  const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  const bool connected = fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  freeaddrinfo(found);
  if (!connected) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", host_port, ": ", why));
  }
  // HTTP/1.0: the server closes after the body, and never answers chunked.
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host_port, "\r\n\r\n");
  std::string response;
  bool ok = send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
  char buffer[65536];
  for (ssize_t n; ok && (n = recv(fd, buffer, sizeof(buffer), 0)) != 0;) {
    if (n < 0) {
      ok = errno == EINTR;
      continue;
    }
    response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  if (!ok) return absl::UnavailableError(absl::StrCat("GET ", path, " from ", host_port, " failed"));
  if (response.rfind("HTTP/1.", 0) != 0 || response.find(" 200 ") == std::string::npos ||
      response.find(" 200 ") > response.find('\n')) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, " from ", host_port, ": ", response.substr(0, response.find('\r'))));
  }
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? std::string() : response.substr(body + 4);
}

double SumSamples(std::string_view exposition, std::string_view metric, const std::vector<std::string>& labels) {
  double sum = 0.0;
  for (absl::string_view piece : absl::StrSplit(absl::string_view(exposition.data(), exposition.size()), '\n')) {
    const std::string_view line(piece.data(), piece.size());
    if (line.size() <= metric.size() || line.substr(0, metric.size()) != metric) continue;
    const char next = line[metric.size()];
    if (next != '{' && next != ' ') continue;
    const size_t value_at = line.rfind(' ');
    const std::string_view label_set = line.substr(metric.size(), value_at - metric.size());
    bool match = true;
    for (const std::string& label : labels) match = match && label_set.find(label) != std::string_view::npos;
    if (match) sum += std::strtod(std::string(line.substr(value_at + 1)).c_str(), nullptr);
  }
  return sum;
}

std::map<std::string, double> SumByLabel(std::string_view exposition, std::string_view metric, std::string_view label) {
  std::map<std::string, double> sums;
  const std::string key = std::string(label) + "=\"";
  for (absl::string_view piece : absl::StrSplit(absl::string_view(exposition.data(), exposition.size()), '\n')) {
    const std::string_view line(piece.data(), piece.size());
    if (line.size() <= metric.size() || line.substr(0, metric.size()) != metric || line[metric.size()] != '{') continue;
    const size_t close = line.find('}');
    size_t at = line.find(key);
    // `key` must start a label inside the braces (not end another label's name: `xreason="`).
    while (at != std::string_view::npos && line[at - 1] != '{' && line[at - 1] != ',') at = line.find(key, at + 1);
    if (at == std::string_view::npos || close == std::string_view::npos || at > close) continue;
    const size_t value_begin = at + key.size();
    const size_t value_end = line.find('"', value_begin);
    if (value_end == std::string_view::npos) continue;
    sums[std::string(line.substr(value_begin, value_end - value_begin))] +=
        std::strtod(std::string(line.substr(line.rfind(' ') + 1)).c_str(), nullptr);
  }
  return sums;
}

bool HasMetric(std::string_view exposition, std::string_view metric) {
  const std::string type_line = "# TYPE " + std::string(metric) + " ";
  for (absl::string_view piece : absl::StrSplit(absl::string_view(exposition.data(), exposition.size()), '\n')) {
    const std::string_view line(piece.data(), piece.size());
    if (line.rfind(type_line, 0) == 0) return true;
    if (line.size() > metric.size() && line.substr(0, metric.size()) == metric &&
        (line[metric.size()] == '{' || line[metric.size()] == ' ')) {
      return true;
    }
  }
  return false;
}

}  // namespace indexcache::bench
