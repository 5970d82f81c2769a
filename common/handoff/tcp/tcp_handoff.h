// The raw TCP handoff data plane (Boost.Asio): one connection per handoff, HandoffChunks in
// length-prefixed frames whose rows bytes travel as raw payload (tcp_frame.h has the format), then an
// end frame; the server answers with one ack frame.
//
// The server reads asynchronously: accepting, the token's challenge (handshake.h) and every frame
// read are Asio coroutines on an io_context that a few threads serve, a strand per connection, so a
// connection waiting for its peer holds no thread. The sink's calls, which block (LandRows waits for
// room in the receive area, OnChunk for the engine loop), run on thread pools of their own, one call
// at a time per connection and in the stream's order, the connection's reading resuming when the
// sink returns; rows bytes are read straight into the memory LandRows returns. What a peer can make
// the server hold is bounded: connections (TcpHandoffOptions::max_connections), the wait for each
// socket operation (io_timeout), and memory allocated ahead of the bytes (kEagerReadBytes a frame).
// The sender writes blocking, on its caller's thread (one per handoff on the prefill worker).
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
  // treated as gone, its connection closed. Time the server spends in the sink does not count.
  absl::Duration io_timeout = absl::Seconds(60);
  // Connections a server serves at once; one more is closed as soon as it is accepted. A decode
  // worker takes one handoff per admitted request, so this is far above what its KV cache admits at
  // a time, and it bounds what idle or hostile peers can hold.
  int max_connections = 64;
  // The cluster token each connection proves before its first frame (handshake.h): the server
  // challenges, the sender answers. None: no handshake. (`{}`: designated initializers that leave it
  // out raise no -Wmissing-field-initializers.)
  ClusterToken token{};
};

class TcpHandoffServer {
 public:
  // Listens on `host`:`port` (an IP address; port 0 picks a free one) and hands every connection's
  // chunks to `sink`, which must outlive the server.
  static absl::StatusOr<std::unique_ptr<TcpHandoffServer>> Start(const std::string& host, int port,
                                                                 HandoffSink* sink,
                                                                 const TcpHandoffOptions& options = {});
  // Serves each connection with `serve` instead, blocking, once the peer proved the token: the NCCL
  // handoff's control channel speaks its own messages in these frames. Accepting, the cap and the
  // handshake are the data plane's, asynchronous; `serve` runs on a thread of a pool of
  // max_connections (tcp_handoff.cc says why it stays blocking), and the connection is closed when it
  // returns.
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
  // Stops accepting, breaks the open connections (the sink sees each handoff broken), waits for
  // them to end (a sink call in progress returns first) and stops the threads. Idempotent.
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
