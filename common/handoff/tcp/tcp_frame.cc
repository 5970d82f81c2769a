#include "common/handoff/tcp/tcp_frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "common/util/logging.h"

namespace indexcache {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;

static_assert(std::endian::native == std::endian::little, "the frame prefix is written in host order");

constexpr uint8_t kMagic0 = 'I';
constexpr uint8_t kMagic1 = 'C';

template <typename T>
void Put(uint8_t* dest, T value) {
  std::memcpy(dest, &value, sizeof(T));
}

template <typename T>
T Get(const uint8_t* src) {
  T value;
  std::memcpy(&value, src, sizeof(T));
  return value;
}

}  // namespace

absl::Status AsioErrorStatus(const error_code& ec, absl::string_view what) {
  if (ec == asio::error::eof) return absl::UnavailableError(absl::StrCat(what, ": the peer closed the connection"));
  if (ec == asio::error::operation_aborted) return absl::CancelledError(absl::StrCat(what, ": interrupted"));
  return absl::UnavailableError(absl::StrCat(what, ": ", ec.message()));
}

size_t ReadIntoSize(size_t have, size_t size) { return std::min(size, have == 0 ? kEagerReadBytes : 2 * have); }

void SocketInterrupter::Opened(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  fd_ = fd;
}

void SocketInterrupter::Closed() {
  std::lock_guard<std::mutex> lock(mu_);
  fd_ = -1;
}

void SocketInterrupter::Interrupt() {
  std::lock_guard<std::mutex> lock(mu_);
  interrupted_ = true;
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

bool SocketInterrupter::interrupted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return interrupted_;
}

std::array<uint8_t, kFramePrefixBytes> EncodeFramePrefix(const FramePrefix& prefix) {
  std::array<uint8_t, kFramePrefixBytes> bytes{};
  bytes[0] = kMagic0;
  bytes[1] = kMagic1;
  bytes[2] = kFrameVersion;
  bytes[3] = static_cast<uint8_t>(prefix.kind);
  Put<uint32_t>(&bytes[4], prefix.metadata_bytes);
  Put<uint64_t>(&bytes[8], prefix.payload_bytes);
  return bytes;
}

absl::StatusOr<FramePrefix> DecodeFramePrefix(const std::array<uint8_t, kFramePrefixBytes>& bytes) {
  if (bytes[0] != kMagic0 || bytes[1] != kMagic1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("not a handoff frame: magic 0x%02x%02x, want 'IC'", bytes[0], bytes[1]));
  }
  if (bytes[2] != kFrameVersion) {
    return absl::InvalidArgumentError(
        absl::StrFormat("handoff frame version %d is not supported (this build speaks %d)", bytes[2], kFrameVersion));
  }
  FramePrefix prefix;
  const uint8_t kind = bytes[3];
  if (kind < static_cast<uint8_t>(FrameKind::kChunk) || kind > static_cast<uint8_t>(FrameKind::kAck)) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown handoff frame kind %d", kind));
  }
  prefix.kind = static_cast<FrameKind>(kind);
  prefix.metadata_bytes = Get<uint32_t>(&bytes[4]);
  prefix.payload_bytes = Get<uint64_t>(&bytes[8]);
  if (prefix.metadata_bytes > kMaxFrameMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("handoff frame metadata of %d bytes exceeds the %d-byte limit",
                                                      prefix.metadata_bytes, kMaxFrameMetadataBytes));
  }
  if (prefix.payload_bytes > kMaxFramePayloadBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("handoff frame payload of %d bytes exceeds the %d-byte limit",
                                                      prefix.payload_bytes, kMaxFramePayloadBytes));
  }
  return prefix;
}

FramedConnection::FramedConnection(absl::Duration io_timeout) : io_timeout_(io_timeout), socket_(io_) {}

FramedConnection::~FramedConnection() { Close(); }

template <typename Start>
absl::Status FramedConnection::RunFor(Start start, absl::Duration timeout, absl::string_view what) {
  bool done = false;
  error_code result;
  start([&](const error_code& ec, auto&&...) {
    done = true;
    result = ec;
  });
  io_.restart();
  io_.run_for(absl::ToChronoNanoseconds(timeout));
  if (!done) {
    // Abandon the operation: its handler runs now with operation_aborted.
    error_code ignored;
    socket_.cancel(ignored);
    io_.restart();
    io_.run();
    if (!result) return absl::OkStatus();  // it completed just as the time ran out
    if (result != asio::error::operation_aborted) return AsioErrorStatus(result, what);
    return absl::DeadlineExceededError(absl::StrCat(what, ": no progress within ", absl::FormatDuration(timeout)));
  }
  if (result) return AsioErrorStatus(result, what);
  return absl::OkStatus();
}

absl::Status FramedConnection::Connect(const std::string& host, uint16_t port, absl::Duration timeout) {
  error_code ec;
  const asio::ip::address ip = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IP address: ", ec.message()));
  const asio::ip::tcp::endpoint endpoint(ip, port);
  absl::Status status = RunFor([&](auto handler) { socket_.async_connect(endpoint, handler); }, timeout,
                               absl::StrCat("connecting to the TCP handoff endpoint ", host, ":", port));
  if (!status.ok()) return status;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  interrupter_.Opened(socket_.native_handle());
  return absl::OkStatus();
}

absl::Status FramedConnection::Adopt(const asio::ip::tcp& protocol, int native_socket) {
  error_code ec;
  socket_.assign(protocol, native_socket, ec);
  if (ec) {
    ::close(native_socket);
    return AsioErrorStatus(ec, "taking over a handoff connection");
  }
  interrupter_.Opened(native_socket);
  return absl::OkStatus();
}

absl::Status FramedConnection::WriteFrame(FrameKind kind, std::string_view metadata, std::string_view payload) {
  const std::array<uint8_t, kFramePrefixBytes> prefix =
      EncodeFramePrefix({kind, static_cast<uint32_t>(metadata.size()), payload.size()});
  const std::array<asio::const_buffer, 3> buffers = {asio::buffer(prefix),
                                                     asio::buffer(metadata.data(), metadata.size()),
                                                     asio::buffer(payload.data(), payload.size())};
  return RunFor([&](auto handler) { asio::async_write(socket_, buffers, handler); }, io_timeout_,
                "writing a handoff frame");
}

absl::Status FramedConnection::WriteExactly(std::string_view bytes) {
  return RunFor([&](auto handler) { asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()), handler); },
                io_timeout_, "writing the handoff handshake");
}

absl::StatusOr<FramePrefix> FramedConnection::ReadPrefix() {
  std::array<uint8_t, kFramePrefixBytes> bytes;
  absl::Status status = ReadExactly(bytes.data(), bytes.size());
  if (!status.ok()) return status;
  return DecodeFramePrefix(bytes);
}

absl::Status FramedConnection::ReadExactly(void* dest, size_t size) {
  if (size == 0) return absl::OkStatus();
  return RunFor([&](auto handler) { asio::async_read(socket_, asio::buffer(dest, size), handler); }, io_timeout_,
                "reading a handoff frame");
}

absl::Status FramedConnection::ReadInto(std::string& dest, size_t size) {
  size_t have = 0;
  do {
    dest.resize(ReadIntoSize(have, size));
    if (absl::Status read = ReadExactly(dest.data() + have, dest.size() - have); !read.ok()) return read;
    have = dest.size();
  } while (have < size);
  return absl::OkStatus();
}

size_t FramedConnection::Available() {
  error_code ec;
  const size_t n = socket_.available(ec);
  return ec ? 0 : n;
}

void FramedConnection::DrainAndClose(absl::Duration limit) {
  error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  const absl::Time deadline = absl::Now() + limit;
  std::array<char, 64 * 1024> scratch;
  while (!ec && absl::Now() < deadline) {
    bool done = false;
    socket_.async_read_some(asio::buffer(scratch), [&](const error_code& e, size_t) {
      done = true;
      ec = e;
    });
    io_.restart();
    io_.run_for(absl::ToChronoNanoseconds(deadline - absl::Now()));
    if (!done) {
      socket_.cancel(ec);
      io_.restart();
      io_.run();
      break;
    }
  }
  Close();
}

void FramedConnection::Interrupt() { interrupter_.Interrupt(); }

void FramedConnection::Close() {
  interrupter_.Closed();
  error_code ignored;
  socket_.close(ignored);
}

v1::HandoffChunk WithoutRowsData(const v1::HandoffChunk& chunk) {
  v1::HandoffChunk meta;
  meta.set_request_id(chunk.request_id());
  meta.set_sequence(chunk.sequence());
  meta.set_checksum(chunk.checksum());
  v1::KvRows* rows = meta.mutable_rows();
  rows->set_layer(chunk.rows().layer());
  rows->set_kind(chunk.rows().kind());
  rows->set_begin_position(chunk.rows().begin_position());
  rows->set_num_tokens(chunk.rows().num_tokens());
  return meta;
}

void ReplyAndClose(FramedConnection& connection, const v1::HandoffAck& ack) {
  absl::Status sent = connection.WriteFrame(FrameKind::kAck, ack.SerializeAsString(), {});
  if (!sent.ok()) {
    IC_LOG(Debug) << "could not send the handoff ack: " << sent;
  }
  connection.DrainAndClose(kDrainAfterAck);
}

absl::StatusOr<v1::HandoffAck> ReadAckFrame(FramedConnection& connection) {
  absl::StatusOr<FramePrefix> prefix = connection.ReadPrefix();
  if (!prefix.ok()) return prefix.status();
  if (prefix->kind != FrameKind::kAck || prefix->payload_bytes != 0) {
    return absl::InternalError("the decode worker answered with something other than an ack frame");
  }
  std::string metadata;
  if (absl::Status read = connection.ReadInto(metadata, prefix->metadata_bytes); !read.ok()) return read;
  v1::HandoffAck ack;
  if (!ack.ParseFromString(metadata)) return absl::InternalError("the decode worker's ack frame does not parse");
  return ack;
}

}  // namespace indexcache
