#include "common/handoff/tcp/tcp_handoff.h"

#include <bit>
#include <chrono>
#include <list>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/handoff/tcp/handshake.h"
#include "common/handoff/tcp/rows_frame_bound.h"
#include "common/handoff/tcp/tcp_frame.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;

absl::StatusOr<bool> ReadTcpChunk(FramedConnection& connection, RowsFrameBound& bound, HandoffSink& sink,
                                  v1::HandoffChunk& chunk, HostRows& rows);

}  // namespace

// ---------------------------------------------------------------------------------------------
// Server

class TcpHandoffServer::Impl {
 public:
  Impl(ConnectionHandler serve, const TcpHandoffOptions& options)
      : serve_(std::move(serve)),
        options_(options),
        acceptor_(accept_io_),
        retry_timer_(accept_io_),
        work_(asio::make_work_guard(accept_io_)) {}

  absl::Status Listen(const std::string& host, int port);
  void Shutdown();
  const std::string& address() const { return address_; }
  uint64_t authentication_failures() const { return authentication_failures_; }

 private:
  struct Live {
    std::shared_ptr<FramedConnection> connection;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void AcceptNext();
  void Spawn(std::shared_ptr<FramedConnection> connection);

  ConnectionHandler serve_;
  TcpHandoffOptions options_;
  std::string address_;
  asio::io_context accept_io_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread accept_thread_;
  std::mutex mu_;
  bool stopping_ = false;  // guarded by mu_
  std::list<Live> live_;   // guarded by mu_
  uint64_t refused_ = 0;   // guarded by mu_: connections closed at the cap
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
  accept_thread_ = std::thread([this] { accept_io_.run(); });
  return absl::OkStatus();
}

void TcpHandoffServer::Impl::AcceptNext() {
  auto connection = std::make_shared<FramedConnection>(options_.io_timeout);
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
    Spawn(connection);
    AcceptNext();
  });
}

void TcpHandoffServer::Impl::Spawn(std::shared_ptr<FramedConnection> connection) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  // Join the threads of finished connections.
  for (auto it = live_.begin(); it != live_.end();) {
    if (it->done) {
      it->thread.join();
      it = live_.erase(it);
    } else {
      ++it;
    }
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
  Live& live = live_.emplace_back();
  live.connection = std::move(connection);
  live.thread = std::thread([this, &live] {
    // Nothing is read as a frame before the peer proved the token: a stranger makes the server
    // allocate no more than the challenge.
    if (absl::Status auth = ChallengePeer(*live.connection, options_.token); auth.ok()) {
      serve_(*live.connection);
    } else if (const uint64_t failures = ++authentication_failures_; std::has_single_bit(failures)) {
      // Every power of two: a flood of strangers does not flood the log too.
      IC_LOG(Warning) << "handoff server on " << address_ << ": closed a connection that failed authentication ("
                      << auth.message() << "); " << failures << " since start";
    }
    live.connection->Close();
    live.done = true;
  });
}

v1::HandoffAck ServeHandoffStream(HandoffSink& sink, const ChunkReader& read_next) {
  std::string request_id;
  bool trailer_accepted = false;
  v1::HandoffChunk chunk;
  auto broken = [&](const absl::Status& why) {
    sink.OnBroken(request_id, why);
    return MakeAck(why);
  };
  for (;;) {
    chunk.Clear();
    HostRows rows;
    absl::StatusOr<bool> more = read_next(chunk, rows);
    if (!more.ok()) return broken(more.status());
    if (!*more) {
      if (!trailer_accepted) {
        return broken(absl::AbortedError(
            absl::StrFormat("the handoff stream of request '%s' ended before its trailer", request_id)));
      }
      return sink.OnComplete(request_id);
    }
    if (request_id.empty()) request_id = chunk.request_id();
    if (chunk.request_id() != request_id) {
      return broken(absl::InvalidArgumentError(absl::StrFormat(
          "a handoff connection carries one request: chunk %d names '%s' after '%s'", chunk.sequence(),
          chunk.request_id(), request_id)));
    }
    if (trailer_accepted) {
      return broken(absl::InvalidArgumentError(
          absl::StrFormat("request '%s': chunk %d arrived after the trailer", request_id, chunk.sequence())));
    }
    if (absl::Status verdict = sink.OnChunk(chunk, std::move(rows)); !verdict.ok()) {
      IC_LOG(Debug) << "handoff of request '" << request_id << "' rejected: " << verdict;
      return MakeAck(verdict);
    }
    trailer_accepted = chunk.has_trailer();
  }
}

namespace {

// The TCP data plane's frames: a chunk's metadata, then its rows bytes as the payload, bounded by what
// the stream's header announced before any of it is read, and read where the sink lands them.
absl::StatusOr<bool> ReadTcpChunk(FramedConnection& connection, RowsFrameBound& bound, HandoffSink& sink,
                                  v1::HandoffChunk& chunk, HostRows& rows) {
  ASSIGN_OR_RETURN(FramePrefix prefix, connection.ReadPrefix());
  if (prefix.kind == FrameKind::kAck) return absl::InvalidArgumentError("a handoff sender sent an ack frame");
  if (prefix.kind == FrameKind::kEnd) {
    if (prefix.metadata_bytes != 0 || prefix.payload_bytes != 0) {
      return absl::InvalidArgumentError("a handoff end frame must be empty");
    }
    return false;
  }
  std::string metadata;
  RETURN_IF_ERROR(connection.ReadInto(metadata, prefix.metadata_bytes));
  if (!chunk.ParseFromString(metadata)) {
    return absl::InvalidArgumentError("a handoff chunk frame's metadata is not a HandoffChunk");
  }
  if (chunk.has_header()) bound.Announce(chunk.header());
  if (prefix.payload_bytes > 0) {
    if (!chunk.has_rows() || !chunk.rows().data().empty()) {
      return absl::InvalidArgumentError("a handoff frame's payload must be the rows of a rows chunk");
    }
    RETURN_IF_ERROR(bound.Check(chunk.rows(), prefix.payload_bytes));
    ASSIGN_OR_RETURN(rows, sink.LandRows(chunk, prefix.payload_bytes));
    if (!rows.empty()) {
      RETURN_IF_ERROR(connection.ReadExactly(rows.data, rows.size));
      return true;
    }
    RETURN_IF_ERROR(connection.ReadInto(*chunk.mutable_rows()->mutable_data(), prefix.payload_bytes));
  }
  return true;
}

}  // namespace

void TcpHandoffServer::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  asio::post(accept_io_, [this] {
    error_code ignored;
    acceptor_.close(ignored);
    retry_timer_.cancel();
  });
  work_.reset();
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Live& l : live_) l.connection->Interrupt();
  }
  // No thread adds to live_ any more (stopping_), so it can be walked without the lock.
  for (Live& l : live_) l.thread.join();
  live_.clear();
}

TcpHandoffServer::TcpHandoffServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TcpHandoffServer::~TcpHandoffServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<TcpHandoffServer>> TcpHandoffServer::Start(const std::string& host, int port,
                                                                          HandoffSink* sink,
                                                                          const TcpHandoffOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<TcpHandoffServer> server,
                   StartWithHandler(
                       host, port, [sink](FramedConnection& connection) {
                         RowsFrameBound bound;
                         const v1::HandoffAck verdict = ServeHandoffStream(
                             *sink, [&](v1::HandoffChunk& chunk, HostRows& rows) {
                               return ReadTcpChunk(connection, bound, *sink, chunk, rows);
                             });
                         ReplyAndClose(connection, verdict);
                       },
                       options));
  IC_LOG(Info) << "TCP handoff data plane listening on " << server->address();
  return server;
}

absl::StatusOr<std::unique_ptr<TcpHandoffServer>> TcpHandoffServer::StartWithHandler(const std::string& host,
                                                                                     int port,
                                                                                     ConnectionHandler serve,
                                                                                     const TcpHandoffOptions& options) {
  auto impl = std::make_unique<Impl>(std::move(serve), options);
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
