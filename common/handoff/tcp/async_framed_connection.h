// The TCP handoff server's side of a connection: the frames of tcp_frame.h read asynchronously, as
// Boost.Asio coroutines (awaitables) on the connection's strand, so a connection waiting for its peer
// holds no thread. Every socket operation is bounded by the I/O timeout (a steady_timer that cancels
// it): a peer silent that long is treated as gone.
//
// Operations run one at a time, from a coroutine on executor(); Interrupt may come from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "boost/asio/any_io_executor.hpp"
#include "boost/asio/awaitable.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/handoff/tcp/tcp_frame.h"

namespace indexcache {

class AsyncFramedConnection : public std::enable_shared_from_this<AsyncFramedConnection> {
 public:
  // `strand`: the executor the socket, its timer and the coroutine serving it run on.
  AsyncFramedConnection(boost::asio::any_io_executor strand, absl::Duration io_timeout);
  ~AsyncFramedConnection();
  AsyncFramedConnection(const AsyncFramedConnection&) = delete;
  AsyncFramedConnection& operator=(const AsyncFramedConnection&) = delete;

  boost::asio::any_io_executor executor() { return socket_.get_executor(); }
  // For an acceptor to accept into; call Opened once it did.
  boost::asio::ip::tcp::socket& socket() { return socket_; }
  void Opened();

  boost::asio::awaitable<absl::Status> WriteExactly(std::string_view bytes);
  boost::asio::awaitable<absl::Status> ReadExactly(void* dest, size_t size);
  boost::asio::awaitable<absl::StatusOr<FramePrefix>> ReadPrefix();
  // Reads exactly `size` bytes into `dest` (resized to them), allocated as ReadIntoSize says.
  boost::asio::awaitable<absl::Status> ReadInto(std::string& dest, size_t size);
  // The server's last word: the ack frame, then kDrainAfterAck of discarding what the sender still
  // writes (so the ack is not lost to a reset), then Close.
  boost::asio::awaitable<void> ReplyAndClose(const v1::HandoffAck& ack);

  // The same connection as a blocking FramedConnection, on a duplicate of the socket's descriptor:
  // for a handler that blocks (TcpHandoffServer::StartWithHandler). This connection stays open
  // meanwhile, so Interrupt still reaches the socket.
  absl::StatusOr<std::unique_ptr<FramedConnection>> BlockingDuplicate();

  // From any thread: shuts the socket down, so pending and later operations fail (UNAVAILABLE, "the
  // server is shutting down").
  void Interrupt();
  void Close();

 private:
  // Runs the socket operation `start` (given the completion token) until it completes or `timeout`
  // passes, when the timer cancels it (DEADLINE_EXCEEDED).
  template <typename Start>
  boost::asio::awaitable<absl::Status> Timed(Start start, absl::Duration timeout, absl::string_view what);

  const absl::Duration io_timeout_;
  boost::asio::ip::tcp::socket socket_;
  boost::asio::steady_timer deadline_;
  // Which operation deadline_ is armed for: a timer that fired just as its operation completed (its
  // handler already queued) must not cancel the next one.
  uint64_t deadline_armed_for_ = 0;
  bool deadline_passed_ = false;
  SocketInterrupter interrupter_;
};

}  // namespace indexcache
