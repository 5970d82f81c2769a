// The raw TCP handoff data plane (Boost.Asio): one connection per handoff, HandoffChunks in
// length-prefixed frames whose rows bytes travel as raw payload (tcp_frame.h has the format), then an
// end frame; the server answers with one ack frame. Blocking I/O on a thread per connection: the
// sink's calls block on the engine anyway, and a handoff is long-lived and few per worker. What a
// peer can make the server hold is bounded: connections (TcpHandoffOptions::max_connections), the
// wait for each read (io_timeout), and memory allocated ahead of the bytes (kEagerReadBytes a frame).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/tcp/sender_verdict.h"
#include "common/util/host_port.h"

namespace indexcache {

class FramedConnection;

struct TcpHandoffOptions {
  // Bound on every read and write, the wait for the next chunk included: a peer silent that long is
  // treated as gone.
  absl::Duration io_timeout = absl::Seconds(60);
  // Connections a server serves at once (a thread each); one more is closed as soon as it is
  // accepted. A decode worker takes one handoff per admitted request, so this is far above what its
  // KV cache admits at a time, and it bounds what idle or hostile peers can hold.
  int max_connections = 64;
  // The cluster token each connection proves before its first frame (handshake.h): the server
  // challenges, the sender answers. None: no handshake. (`{}`: designated initializers that leave it
  // out raise no -Wmissing-field-initializers.)
  ClusterToken token{};
};

// Reads a connection's next frame into `chunk` (cleared) and, when the sink landed them
// (HandoffSink::LandRows), its rows bytes into `rows`: true for a chunk, false at the end frame.
using ChunkReader = std::function<absl::StatusOr<bool>(v1::HandoffChunk& chunk, HostRows& rows)>;
// The server side of one handoff stream, whatever carries the bytes (the TCP data plane, the NCCL
// control channel): chunks from `read_next` go to `sink` in order, with the checks every stream gets
// (one request per stream, nothing after the trailer, no end before it). Returns the verdict to send
// back; the sink has seen OnComplete, OnBroken, or rejected a chunk.
v1::HandoffAck ServeHandoffStream(HandoffSink& sink, const ChunkReader& read_next);

class TcpHandoffServer {
 public:
  // Listens on `host`:`port` (an IP address; port 0 picks a free one) and hands every connection's
  // chunks to `sink`, which must outlive the server.
  static absl::StatusOr<std::unique_ptr<TcpHandoffServer>> Start(const std::string& host, int port,
                                                                 HandoffSink* sink,
                                                                 const TcpHandoffOptions& options = {});
  // Serves each connection with `serve` instead (on the connection's own thread; the connection is
  // closed when it returns): the NCCL handoff's control channel speaks its own messages in these frames.
  using ConnectionHandler = std::function<void(FramedConnection&)>;
  static absl::StatusOr<std::unique_ptr<TcpHandoffServer>> StartWithHandler(const std::string& host, int port,
                                                                            ConnectionHandler serve,
                                                                            const TcpHandoffOptions& options = {});
  ~TcpHandoffServer();  // Shutdown()
  TcpHandoffServer(const TcpHandoffServer&) = delete;
  TcpHandoffServer& operator=(const TcpHandoffServer&) = delete;

  // "host:port" as bound, e.g. "127.0.0.1:40123".
  const std::string& address() const;
  // Connections closed because they failed the authentication handshake, since start.
  uint64_t authentication_failures() const;
  // Stops accepting, breaks the open connections (the sink sees each handoff broken) and joins
  // their threads. Idempotent.
  void Shutdown();

 private:
  class Impl;
  explicit TcpHandoffServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class TcpHandoffSender final : public HandoffSender {
 public:
  // `address` is "ip:port".
  static absl::StatusOr<std::unique_ptr<TcpHandoffSender>> Connect(const std::string& address,
                                                                   absl::Duration connect_timeout,
                                                                   const TcpHandoffOptions& options = {});
  ~TcpHandoffSender() override;

  using HandoffSender::Send;
  absl::Status Send(const v1::HandoffChunk& chunk, std::string_view rows_data) override;
  absl::StatusOr<v1::HandoffAck> Finish() override;
  void Cancel() override;
  const HandoffByteCounts& bytes() const override { return bytes_; }

 private:
  explicit TcpHandoffSender(std::unique_ptr<FramedConnection> connection);

  const std::unique_ptr<FramedConnection> connection_;
  SenderVerdict verdict_;
  std::atomic<bool> cancelled_{false};
  HandoffByteCounts bytes_;
};

// The transport's entry in a worker's HandoffTransports: TcpHandoffSender::Connect with `options`,
// one connection per handoff, nothing kept between them.
class TcpHandoffConnector final : public HandoffConnector {
 public:
  explicit TcpHandoffConnector(const TcpHandoffOptions& options = {}) : options_(options) {}
  v1::HandoffTransport transport() const override { return v1::HANDOFF_TRANSPORT_TCP; }
  std::string_view name() const override { return "tcp"; }
  HandoffCapabilities capabilities() const override { return {}; }
  absl::StatusOr<std::unique_ptr<HandoffSender>> Connect(const std::string& address,
                                                         absl::Duration connect_timeout) override;

 private:
  const TcpHandoffOptions options_;
};

}  // namespace indexcache
