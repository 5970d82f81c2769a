#include "common/handoff/tcp/tcp_handoff.h"

#include <bit>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/co_spawn.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/thread_pool.hpp"
#include "boost/asio/use_awaitable.hpp"
#include "common/handoff/tcp/async_framed_connection.h"
#include "common/handoff/tcp/handoff_stream.h"
#include "common/handoff/tcp/handshake.h"
#include "common/handoff/tcp/rows_frame_bound.h"
#include "common/handoff/tcp/tcp_frame.h"
#include "common/util/status_macros.h"
#include "common/util/logging.h"

namespace indexcache {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;

// Threads running every connection's socket operations and frame parsing. They never block — the
// sink's calls run on the pools below — so a few serve any number of connections; several, so that
// more than one handoff's rows are read from the sockets at a time.
constexpr int kIoThreads = 4;
// Threads for HandoffSink::LandRows, which waits (up to a minute) for room in the decode worker's
// receive area. Apart from the sink's other calls because room comes back through them: rows landed
// reach OnChunk, which queues their import, whose end returns the room. On shared threads, LandRows
// calls waiting for room could take every one and leave none for the OnChunk that frees it.
constexpr int kLandingThreads = 4;
// Threads for the sink's other calls (OnChunk, OnComplete, OnBroken), which wait for the engine loop.
constexpr int kSinkThreads = 4;

// Runs `call`, which may block, on `threads`, and resumes the calling coroutine on its own executor
// (its connection's strand) with what `call` returned.
template <typename Call>
asio::awaitable<std::invoke_result_t<Call&>> OffIoThreads(asio::thread_pool& threads, Call call) {
  co_return co_await asio::co_spawn(
      threads, [&call]() -> asio::awaitable<std::invoke_result_t<Call&>> { co_return call(); }, asio::use_awaitable);
}

// What a server does with a connection once the peer has proven the cluster token.
class ConnectionService {
 public:
  virtual ~ConnectionService() = default;
  // Runs on the connection's strand; the server closes the connection when it returns.
  virtual asio::awaitable<void> Serve(AsyncFramedConnection& connection) = 0;
};

// The TCP data plane (TcpHandoffServer::Start): one handoff stream a connection, its frames read
// asynchronously, the sink called on threads of its own — one call at a time per connection, each
// awaited before the next frame is read, so the sink sees a stream's chunks in order.
class HandoffStreamService final : public ConnectionService {
 public:
  explicit HandoffStreamService(HandoffSink& sink)
      : sink_(sink), landing_threads_(kLandingThreads), sink_threads_(kSinkThreads) {}

  asio::awaitable<void> Serve(AsyncFramedConnection& connection) override {
    HandoffStreamReceiver stream(sink_);
    RowsFrameBound bound;
    std::optional<v1::HandoffAck> verdict;
    while (!verdict.has_value()) {
      v1::HandoffChunk chunk;
      LandedRows rows;
      const absl::StatusOr<bool> read = co_await ReadChunk(connection, bound, chunk, rows);
      verdict = co_await OffIoThreads(sink_threads_, [&] { return stream.Take(read, chunk, std::move(rows)); });
    }
    co_await connection.ReplyAndClose(*verdict);
  }

 private:
  // The next frame: a chunk's metadata, then its rows bytes as the payload, bounded by what the
  // stream's header announced before any of it is read, and read straight where the sink lands them
  // (no copy between the socket and the decode worker's receive area). True for a chunk, false at the
  // end frame.
  asio::awaitable<absl::StatusOr<bool>> ReadChunk(AsyncFramedConnection& connection, RowsFrameBound& bound,
                                                  v1::HandoffChunk& chunk, LandedRows& rows) {
    CO_ASSIGN_OR_RETURN(const FramePrefix prefix, co_await connection.ReadPrefix());
    if (prefix.kind == FrameKind::kAck) co_return absl::InvalidArgumentError("a handoff sender sent an ack frame");
    if (prefix.kind == FrameKind::kEnd) {
      if (prefix.metadata_bytes != 0 || prefix.payload_bytes != 0) {
        co_return absl::InvalidArgumentError("a handoff end frame must be empty");
      }
      co_return false;
    }
    std::string metadata;
    CO_RETURN_IF_ERROR(co_await connection.ReadInto(metadata, prefix.metadata_bytes));
    if (!chunk.ParseFromString(metadata)) {
      co_return absl::InvalidArgumentError("a handoff chunk frame's metadata is not a HandoffChunk");
    }
    if (chunk.has_header()) bound.Announce(chunk.header());
    if (prefix.payload_bytes == 0) co_return true;
    if (!chunk.has_rows() || !chunk.rows().data().empty()) {
      co_return absl::InvalidArgumentError("a handoff frame's payload must be the rows of a rows chunk");
    }
    CO_RETURN_IF_ERROR(bound.Check(chunk.rows(), prefix.payload_bytes));
    CO_ASSIGN_OR_RETURN(rows, co_await OffIoThreads(landing_threads_,
                                                    [&] { return sink_.LandRows(chunk, prefix.payload_bytes); }));
    if (!rows.empty()) {
      CO_RETURN_IF_ERROR(co_await connection.ReadExactly(rows.data, rows.size));
      co_return true;
    }
    CO_RETURN_IF_ERROR(co_await connection.ReadInto(*chunk.mutable_rows()->mutable_data(), prefix.payload_bytes));
    co_return true;
  }

  HandoffSink& sink_;
  asio::thread_pool landing_threads_;
  asio::thread_pool sink_threads_;
};

// StartWithHandler's connections (the NCCL handoff's control channel): accepted, capped and
// authenticated asynchronously like the data plane's, so idle and unauthenticated peers hold no
// thread; then served by the blocking handler on a thread of a pool of max_connections, which the
// cap keeps from running short. Not made asynchronous because the handler waits on what Asio cannot
// wait for — NCCL receives polled against a deadline, communicator joins, the sink — and its
// connections are few: one per NCCL handoff, between the GPUs of one host.
class BlockingHandlerService final : public ConnectionService {
 public:
  BlockingHandlerService(TcpHandoffServer::ConnectionHandler serve, int max_connections)
      : serve_(std::move(serve)), threads_(max_connections) {}

  asio::awaitable<void> Serve(AsyncFramedConnection& connection) override {
    absl::StatusOr<std::unique_ptr<FramedConnection>> blocking = connection.BlockingDuplicate();
    if (!blocking.ok()) {
      IC_LOG(Warning) << "a handoff connection was closed unserved: " << blocking.status();
      co_return;
    }
    co_await OffIoThreads(threads_, [&] { serve_(**blocking); });
  }

 private:
  const TcpHandoffServer::ConnectionHandler serve_;
  asio::thread_pool threads_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Server

class TcpHandoffServer::Impl {
 public:
  Impl(std::unique_ptr<ConnectionService> service, const TcpHandoffOptions& options)
      : options_(options),
        service_(std::move(service)),
        acceptor_(asio::make_strand(io_)),
        retry_timer_(acceptor_.get_executor()),
        work_(asio::make_work_guard(io_)) {}

  absl::Status Listen(const std::string& host, int port);
  void Shutdown();
  const std::string& address() const { return address_; }
  uint64_t authentication_failures() const { return authentication_failures_; }

 private:
  void AcceptNext();
  // Serves `connection`, or closes it at once when max_connections are open.
  void Admit(std::shared_ptr<AsyncFramedConnection> connection);
  asio::awaitable<void> Serve(std::shared_ptr<AsyncFramedConnection> connection);
  void Forget(const std::shared_ptr<AsyncFramedConnection>& connection);

  const TcpHandoffOptions options_;
  std::string address_;
  asio::io_context io_;
  const std::unique_ptr<ConnectionService> service_;
  asio::ip::tcp::acceptor acceptor_;  // on a strand of its own, like retry_timer_
  asio::steady_timer retry_timer_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> io_threads_;
  std::mutex mu_;
  std::condition_variable all_closed_;
  bool stopping_ = false;                                            // guarded by mu_
  absl::flat_hash_set<std::shared_ptr<AsyncFramedConnection>> live_;  // guarded by mu_: being served
  uint64_t refused_ = 0;                                             // guarded by mu_: closed at the cap
  std::atomic<uint64_t> authentication_failures_{0};
};

absl::Status TcpHandoffServer::Impl::Listen(const std::string& host, int port) {
  if (port < 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("bad TCP handoff port ", port));
  error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IP address: ", ec.message()));
  const asio::ip::tcp::endpoint endpoint(ip, static_cast<uint16_t>(port));
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot listen for TCP handoffs on ", host, ":", port, ": ",
                                               ec.message()));
  }
  const uint16_t bound = acceptor_.local_endpoint(ec).port();
  address_ = ip.is_v6() ? absl::StrCat("[", host, "]:", bound) : absl::StrCat(host, ":", bound);
  AcceptNext();
  for (int i = 0; i < kIoThreads; ++i) io_threads_.emplace_back([this] { io_.run(); });
  return absl::OkStatus();
}

void TcpHandoffServer::Impl::AcceptNext() {
  // Each connection on a strand of its own: its coroutine, socket and timer never run at once.
  auto connection = std::make_shared<AsyncFramedConnection>(asio::make_strand(io_), options_.io_timeout);
  acceptor_.async_accept(connection->socket(), [this, connection](const error_code& ec) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Out of descriptors, typically: pause instead of spinning on the error.
      IC_LOG(Warning) << "TCP handoff accept failed: " << ec.message();
      retry_timer_.expires_after(std::chrono::milliseconds(100));
      retry_timer_.async_wait([this](const error_code& wait) {
        if (!wait) AcceptNext();
      });
      return;
    }
    connection->Opened();
    Admit(std::move(connection));
    AcceptNext();
  });
}

void TcpHandoffServer::Impl::Admit(std::shared_ptr<AsyncFramedConnection> connection) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      connection->Close();
      return;
    }
    if (static_cast<int>(live_.size()) >= options_.max_connections) {
      // Every power of two: a flood of connections does not flood the log too.
      if (std::has_single_bit(++refused_)) {
        IC_LOG(Warning) << "TCP handoff server on " << address_ << ": " << options_.max_connections
                        << " connections open; refused " << refused_ << " since start";
      }
      connection->Close();
      return;
    }
    live_.insert(connection);
  }
  const asio::any_io_executor strand = connection->executor();
  asio::co_spawn(strand, Serve(connection), [this, connection](std::exception_ptr failure) {
    if (failure != nullptr) {
      try {
        std::rethrow_exception(failure);
      } catch (const std::exception& e) {
        IC_LOG(Error) << "TCP handoff server on " << address_ << ": a connection failed: " << e.what();
      }
    }
    Forget(connection);
  });
}

asio::awaitable<void> TcpHandoffServer::Impl::Serve(std::shared_ptr<AsyncFramedConnection> connection) {
  // Nothing is read as a frame before the peer proved the token: a stranger makes the server
  // allocate no more than the challenge.
  if (absl::Status auth = co_await ChallengePeer(*connection, options_.token); !auth.ok()) {
    if (const uint64_t failures = ++authentication_failures_; std::has_single_bit(failures)) {
      // Every power of two: a flood of strangers does not flood the log too.
      IC_LOG(Warning) << "handoff server on " << address_ << ": closed a connection that failed authentication ("
                      << auth.message() << "); " << failures << " since start";
    }
  } else {
    co_await service_->Serve(*connection);
  }
  connection->Close();
}

void TcpHandoffServer::Impl::Forget(const std::shared_ptr<AsyncFramedConnection>& connection) {
  std::lock_guard<std::mutex> lock(mu_);
  live_.erase(connection);
  if (live_.empty()) all_closed_.notify_all();
}

void TcpHandoffServer::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    // Each connection's next socket operation fails at once; its coroutine tells the sink and ends.
    for (const std::shared_ptr<AsyncFramedConnection>& connection : live_) connection->Interrupt();
  }
  asio::post(acceptor_.get_executor(), [this] {
    error_code ignored;
    acceptor_.close(ignored);
    retry_timer_.cancel();
  });
  {
    // A sink call in progress finishes first (LandRows waits for room at most its own deadline).
    std::unique_lock<std::mutex> lock(mu_);
    all_closed_.wait(lock, [&] { return live_.empty(); });
  }
  work_.reset();
  for (std::thread& thread : io_threads_) thread.join();
  io_threads_.clear();
}

TcpHandoffServer::TcpHandoffServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TcpHandoffServer::~TcpHandoffServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<TcpHandoffServer>> TcpHandoffServer::Start(const std::string& host, int port,
                                                                          HandoffSink* sink,
                                                                          const TcpHandoffOptions& options) {
  auto impl = std::make_unique<Impl>(std::make_unique<HandoffStreamService>(*sink), options);
  RETURN_IF_ERROR(impl->Listen(host, port));
  IC_LOG(Info) << "TCP handoff data plane listening on " << impl->address();
  return std::unique_ptr<TcpHandoffServer>(new TcpHandoffServer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<TcpHandoffServer>> TcpHandoffServer::StartWithHandler(const std::string& host,
                                                                                     int port,
                                                                                     ConnectionHandler serve,
                                                                                     const TcpHandoffOptions& options) {
  auto impl = std::make_unique<Impl>(std::make_unique<BlockingHandlerService>(std::move(serve), options.max_connections),
                                     options);
  RETURN_IF_ERROR(impl->Listen(host, port));
  return std::unique_ptr<TcpHandoffServer>(new TcpHandoffServer(std::move(impl)));
}

const std::string& TcpHandoffServer::address() const { return impl_->address(); }

uint64_t TcpHandoffServer::authentication_failures() const { return impl_->authentication_failures(); }

void TcpHandoffServer::Shutdown() { impl_->Shutdown(); }

// ---------------------------------------------------------------------------------------------
// Sender

TcpHandoffSender::TcpHandoffSender(std::unique_ptr<FramedConnection> connection)
    : connection_(std::move(connection)), verdict_(*connection_) {}

TcpHandoffSender::~TcpHandoffSender() = default;

absl::StatusOr<std::unique_ptr<TcpHandoffSender>> TcpHandoffSender::Connect(const std::string& address,
                                                                            absl::Duration connect_timeout,
                                                                            const TcpHandoffOptions& options) {
  ASSIGN_OR_RETURN(HostPort target, SplitHostPort(address));
  auto connection = std::make_unique<FramedConnection>(options.io_timeout);
  RETURN_IF_ERROR(connection->Connect(target.host, target.port, connect_timeout));
  RETURN_IF_ERROR(AnswerChallenge(*connection, options.token));
  return std::unique_ptr<TcpHandoffSender>(new TcpHandoffSender(std::move(connection)));
}

absl::Status TcpHandoffSender::Send(const v1::HandoffChunk& chunk, std::string_view rows_data) {
  if (cancelled_) return absl::CancelledError("the handoff was cancelled");
  RETURN_IF_ERROR(verdict_.CheckCanSend());
  if (verdict_.AckWaiting()) return verdict_.TakeEarlyAck();
  std::string metadata;
  std::string_view payload;
  if (chunk.has_rows()) {
    // Everything but the rows bytes, which go out as the payload straight from where they lie.
    metadata = WithoutRowsData(chunk).SerializeAsString();
    payload = RowsData(chunk, rows_data);
  } else {
    metadata = chunk.SerializeAsString();
  }
  if (metadata.size() > kMaxFrameMetadataBytes || payload.size() > kMaxFramePayloadBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "handoff chunk %d is too large for a frame (%d metadata bytes, %d rows bytes)", chunk.sequence(),
        metadata.size(), payload.size()));
  }
  absl::Status sent = connection_->WriteFrame(FrameKind::kChunk, metadata, payload);
  if (!sent.ok()) {
    if (cancelled_) return absl::CancelledError("the handoff was cancelled");
    return verdict_.AfterFailedWrite(sent);
  }
  CountChunkBytes(chunk, rows_data, kFramePrefixBytes + metadata.size() + payload.size(), bytes_);
  return absl::OkStatus();
}

absl::StatusOr<v1::HandoffAck> TcpHandoffSender::Finish() {
  if (cancelled_) return absl::CancelledError("the handoff was cancelled");
  return verdict_.Finish(bytes_);
}

void TcpHandoffSender::Cancel() {
  cancelled_ = true;
  connection_->Interrupt();
}

absl::StatusOr<std::unique_ptr<HandoffSender>> TcpHandoffConnector::Connect(const std::string& address,
                                                                            absl::Duration connect_timeout) {
  return TcpHandoffSender::Connect(address, connect_timeout, options_);
}

}  // namespace indexcache
