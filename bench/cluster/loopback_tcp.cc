#include "bench/cluster/loopback_tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace indexcache::bench {
namespace {

absl::Status Errno(const char* what) { return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno))); }

// Closes the descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// Receives `bytes` on `listener`'s first connection, then answers one byte.
absl::Status Receive(int listener, uint64_t bytes, size_t buffer_bytes) {
  Fd conn{accept(listener, nullptr, nullptr)};
  if (conn.fd < 0) return Errno("accept");
  std::vector<char> buffer(buffer_bytes, 0);
  for (uint64_t got = 0; got < bytes;) {
    const ssize_t n = recv(conn.fd, buffer.data(), buffer.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n == 0 ? absl::DataLossError("the sender closed early") : Errno("recv");
    got += static_cast<uint64_t>(n);
  }
  const char ack = 1;
  return send(conn.fd, &ack, 1, MSG_NOSIGNAL) == 1 ? absl::OkStatus() : Errno("send ack");
}

// Seconds for one connection to carry `bytes`.
absl::StatusOr<double> OneTransfer(const std::vector<char>& source, uint64_t bytes) {
  Fd listener{socket(AF_INET, SOCK_STREAM, 0)};
  if (listener.fd < 0) return Errno("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(listener.fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return Errno("bind");
  if (listen(listener.fd, 1) != 0) return Errno("listen");
  if (getsockname(listener.fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return Errno("getsockname");

  absl::Status received;
  std::thread receiver([&] { received = Receive(listener.fd, bytes, source.size()); });
  Fd conn{socket(AF_INET, SOCK_STREAM, 0)};
  absl::Status sent;
  double seconds = 0.0;
  if (conn.fd < 0 || connect(conn.fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    sent = Errno("connect");
    shutdown(listener.fd, SHUT_RDWR);  // wakes the receiver's accept
  } else {
    const double start = NowSeconds();
    for (uint64_t put = 0; sent.ok() && put < bytes;) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(source.size(), bytes - put));
      const ssize_t n = send(conn.fd, source.data(), want, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        sent = Errno("send");
      } else {
        put += static_cast<uint64_t>(n);
      }
    }
    char ack = 0;
    if (sent.ok() && recv(conn.fd, &ack, 1, MSG_WAITALL) != 1) sent = Errno("recv ack");
    seconds = NowSeconds() - start;
    if (!sent.ok()) shutdown(conn.fd, SHUT_RDWR);
  }
  receiver.join();
  if (!sent.ok()) return sent;
  if (!received.ok()) return received;
  return seconds;
}

}  // namespace

absl::StatusOr<LoopbackTcpRate> MeasureLoopbackTcp(uint64_t bytes, size_t write_bytes, int reps) {
  if (bytes == 0 || write_bytes == 0 || reps < 1) return absl::InvalidArgumentError("bytes, write size and reps must be positive");
  std::vector<char> source(write_bytes);
  for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<char>(i * 131 + 7);  // touched, not zero pages
  LoopbackTcpRate rate;
  rate.bytes = bytes;
  rate.write_bytes = write_bytes;
  std::vector<double> seconds;
  for (int i = 0; i <= reps; ++i) {
    absl::StatusOr<double> s = OneTransfer(source, bytes);
    if (!s.ok()) return s.status();
    if (i > 0) seconds.push_back(*s);  // the first is the warm-up
  }
  rate.seconds = Summarize(std::move(seconds));
  rate.bytes_per_second = static_cast<double>(bytes) / rate.seconds.median;
  return rate;
}

}  // namespace indexcache::bench
