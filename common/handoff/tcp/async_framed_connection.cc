#include "common/handoff/tcp/async_framed_connection.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "boost/asio/read.hpp"
#include "boost/asio/redirect_error.hpp"
#include "boost/asio/use_awaitable.hpp"
#include "boost/asio/write.hpp"
#include "common/util/status_macros.h"
#include "common/util/logging.h"

namespace indexcache {

namespace asio = boost::asio;
using boost::system::error_code;

AsyncFramedConnection::AsyncFramedConnection(asio::any_io_executor strand, absl::Duration io_timeout)
    : io_timeout_(io_timeout), socket_(strand), deadline_(strand) {}

AsyncFramedConnection::~AsyncFramedConnection() { Close(); }

void AsyncFramedConnection::Opened() { interrupter_.Opened(socket_.native_handle()); }

template <typename Start>
asio::awaitable<absl::Status> AsyncFramedConnection::Timed(Start start, absl::Duration timeout, absl::string_view what) {
  const uint64_t operation = ++deadline_armed_for_;
  deadline_passed_ = false;
  deadline_.expires_after(absl::ToChronoNanoseconds(timeout));
  // The timer's handler runs on the strand, like this coroutine; it keeps the connection alive until
  // it ran.
  deadline_.async_wait([self = shared_from_this(), operation](const error_code& ec) {
    if (ec || self->deadline_armed_for_ != operation) return;
    self->deadline_passed_ = true;
    error_code ignored;
    self->socket_.cancel(ignored);
  });
  error_code ec;
  co_await start(asio::redirect_error(asio::use_awaitable, ec));
  ++deadline_armed_for_;
  deadline_.cancel();
  if (!ec) co_return absl::OkStatus();
  if (interrupter_.interrupted()) {
    co_return absl::UnavailableError(absl::StrCat(what, ": the TCP handoff server is shutting down"));
  }
  if (deadline_passed_) {
    co_return absl::DeadlineExceededError(absl::StrCat(what, ": no progress within ", absl::FormatDuration(timeout)));
  }
  co_return AsioErrorStatus(ec, what);
}

asio::awaitable<absl::Status> AsyncFramedConnection::WriteExactly(std::string_view bytes) {
  co_return co_await Timed(
      [&](auto token) { return asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()), token); },
      io_timeout_, "writing the handoff handshake");
}

asio::awaitable<absl::Status> AsyncFramedConnection::ReadExactly(void* dest, size_t size) {
  if (size == 0) co_return absl::OkStatus();
  co_return co_await Timed([&](auto token) { return asio::async_read(socket_, asio::buffer(dest, size), token); },
                           io_timeout_, "reading a handoff frame");
}

asio::awaitable<absl::StatusOr<FramePrefix>> AsyncFramedConnection::ReadPrefix() {
  std::array<uint8_t, kFramePrefixBytes> bytes;
  CO_RETURN_IF_ERROR(co_await ReadExactly(bytes.data(), bytes.size()));
  co_return DecodeFramePrefix(bytes);
}

asio::awaitable<absl::Status> AsyncFramedConnection::ReadInto(std::string& dest, size_t size) {
  size_t have = 0;
  do {
    dest.resize(ReadIntoSize(have, size));
    CO_RETURN_IF_ERROR(co_await ReadExactly(dest.data() + have, dest.size() - have));
    have = dest.size();
  } while (have < size);
  co_return absl::OkStatus();
}

asio::awaitable<void> AsyncFramedConnection::ReplyAndClose(const v1::HandoffAck& ack) {
  const std::string metadata = ack.SerializeAsString();
  const std::array<uint8_t, kFramePrefixBytes> prefix =
      EncodeFramePrefix({FrameKind::kAck, static_cast<uint32_t>(metadata.size()), 0});
  const std::array<asio::const_buffer, 2> buffers = {asio::buffer(prefix), asio::buffer(metadata)};
  absl::Status sent = co_await Timed([&](auto token) { return asio::async_write(socket_, buffers, token); },
                                     io_timeout_, "writing the handoff ack");
  if (!sent.ok()) {
    IC_LOG(Debug) << "could not send the handoff ack: " << sent;
  }
  error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  std::array<char, 16 * 1024> discarded;
  const absl::Time until = absl::Now() + kDrainAfterAck;
  for (absl::Duration left = kDrainAfterAck; left > absl::ZeroDuration(); left = until - absl::Now()) {
    absl::Status drained = co_await Timed(
        [&](auto token) { return socket_.async_read_some(asio::buffer(discarded), token); }, left,
        "draining the handoff connection");
    if (!drained.ok()) break;  // the sender closed (or went silent): the ack had its chance
  }
  Close();
}

absl::StatusOr<std::unique_ptr<FramedConnection>> AsyncFramedConnection::BlockingDuplicate() {
  error_code ec;
  const asio::ip::tcp::endpoint local = socket_.local_endpoint(ec);
  if (ec) return AsioErrorStatus(ec, "handing a handoff connection to its handler");
  const int duplicate = ::dup(socket_.native_handle());
  if (duplicate < 0) {
    return absl::UnavailableError(
        absl::StrCat("handing a handoff connection to its handler: dup: ", std::strerror(errno)));
  }
  auto blocking = std::make_unique<FramedConnection>(io_timeout_);
  if (absl::Status adopted = blocking->Adopt(local.protocol(), duplicate); !adopted.ok()) return adopted;
  return blocking;
}

void AsyncFramedConnection::Interrupt() { interrupter_.Interrupt(); }

void AsyncFramedConnection::Close() {
  interrupter_.Closed();
  error_code ignored;
  deadline_.cancel();
  socket_.close(ignored);
}

}  // namespace indexcache
