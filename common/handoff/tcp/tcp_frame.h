// The TCP handoff data plane's wire format, and the timed, blocking framed connection of its senders
// and of the NCCL control channel's handlers (the TCP server reads asynchronously:
// async_framed_connection.h).
//
// Every frame is a 16-byte little-endian prefix, then `metadata_bytes` of a serialized protobuf, then
// `payload_bytes` of raw bytes:
//   [0, 4)   'I' 'C' version kind
//   [4, 8)   u32 metadata_bytes
//   [8, 16)  u64 payload_bytes
// kChunk: metadata = the HandoffChunk with rows.data left empty, payload = rows.data (so the rows go
//         from the sender's chunk to the receiver's chunk with no copy in between);
// kEnd:   both empty — the sender has no more chunks;
// kAck:   server → sender, metadata = the HandoffAck; the last frame of a connection.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "boost/asio/buffer.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "common/handoff/handoff_transport.h"

namespace indexcache {

enum class FrameKind : uint8_t { kChunk = 1, kEnd = 2, kAck = 3 };

inline constexpr uint8_t kFrameVersion = 1;
inline constexpr size_t kFramePrefixBytes = 16;
// Bounds a receiver enforces before reading anything: the metadata is small (a trailer holds one
// probe per Full layer), the payload at most one chunk's rows.
inline constexpr uint32_t kMaxFrameMetadataBytes = uint32_t{16} << 20;
inline constexpr uint64_t kMaxFramePayloadBytes = kMaxHandoffChunkBytes;
// What a receiver allocates for a frame part before its bytes arrive (FramedConnection::ReadInto):
// a prefill worker's rows chunks (4 MiB by default) fit, and are read with no copy; past it the
// buffer grows with the bytes received, so a peer announcing a large frame and sending nothing makes
// the receiver hold no more than this.
inline constexpr size_t kEagerReadBytes = size_t{4} << 20;
// How long a server keeps reading (and discarding) after its final ack, so the ack is not lost to a
// reset while the sender is still writing.
inline constexpr absl::Duration kDrainAfterAck = absl::Seconds(2);

struct FramePrefix {
  FrameKind kind = FrameKind::kChunk;
  uint32_t metadata_bytes = 0;
  uint64_t payload_bytes = 0;
};

std::array<uint8_t, kFramePrefixBytes> EncodeFramePrefix(const FramePrefix& prefix);
// INVALID_ARGUMENT for a wrong magic, version or kind, or a length past the bounds.
absl::StatusOr<FramePrefix> DecodeFramePrefix(const std::array<uint8_t, kFramePrefixBytes>& bytes);
// The size a frame part of `size` bytes is read into (ReadInto) once `have` of them arrived:
// kEagerReadBytes at first, then double what arrived, never past `size`.
size_t ReadIntoSize(size_t have, size_t size);
// A failed socket operation as a status naming `what` was done: UNAVAILABLE (the peer closed, or the
// error), CANCELLED for an aborted operation.
absl::Status AsioErrorStatus(const boost::system::error_code& ec, absl::string_view what);

// A connection's socket descriptor as other threads see it: any thread may shut the socket down
// (Interrupt) — which fails its pending and later operations, blocking or asynchronous — while the
// connection's own thread (or strand) opens and closes it.
class SocketInterrupter {
 public:
  void Opened(int fd);
  void Closed();
  void Interrupt();
  bool interrupted() const;

 private:
  mutable std::mutex mu_;
  int fd_ = -1;              // guarded by mu_: -1 while not open
  bool interrupted_ = false;  // guarded by mu_
};

// One TCP connection with blocking frame I/O, each operation bounded by `io_timeout` (DEADLINE_EXCEEDED
// past it). Used by one thread at a time, except Interrupt, which any thread may call.
class FramedConnection {
 public:
  explicit FramedConnection(absl::Duration io_timeout);
  ~FramedConnection();
  FramedConnection(const FramedConnection&) = delete;
  FramedConnection& operator=(const FramedConnection&) = delete;

  // The socket, for tests that write raw bytes.
  boost::asio::ip::tcp::socket& socket() { return socket_; }

  absl::Status Connect(const std::string& host, uint16_t port, absl::Duration timeout);
  // Takes over `native_socket`, an open connection of `protocol` (one a server accepted, handed to a
  // blocking handler).
  absl::Status Adopt(const boost::asio::ip::tcp& protocol, int native_socket);
  // Writes the prefix, `metadata` and `payload` in one gather write (no copy of the payload).
  absl::Status WriteFrame(FrameKind kind, std::string_view metadata, std::string_view payload);
  // Writes `bytes` as they are, outside any frame (the authentication handshake, handshake.h).
  absl::Status WriteExactly(std::string_view bytes);
  absl::StatusOr<FramePrefix> ReadPrefix();
  // Reads exactly `size` bytes into `dest`.
  absl::Status ReadExactly(void* dest, size_t size);
  // Reads exactly `size` bytes into `dest` (resized to them), allocating up to kEagerReadBytes at
  // once and, past it, doubling as the bytes arrive.
  absl::Status ReadInto(std::string& dest, size_t size);
  // Bytes readable now without blocking.
  size_t Available();
  // After a final answer: stops sending, discards what the peer still sends until it closes or
  // `limit` passes, so the answer is not lost to a reset.
  void DrainAndClose(absl::Duration limit);
  // Breaks the connection from any thread: blocked and later operations fail.
  void Interrupt();
  void Close();

 private:
  // Runs the async operation `start` launched on io_ until it completes or `timeout` passes.
  template <typename Start>
  absl::Status RunFor(Start start, absl::Duration timeout, absl::string_view what);

  absl::Duration io_timeout_;
  boost::asio::io_context io_;
  boost::asio::ip::tcp::socket socket_;
  SocketInterrupter interrupter_;
};

// A rows chunk with everything but rows.data (which travels apart from the metadata, as a frame's
// payload or over NCCL), without copying the rows.
v1::HandoffChunk WithoutRowsData(const v1::HandoffChunk& chunk);

// The server's last word on a connection (TCP and NCCL handoffs): the ack frame, then DrainAndClose.
void ReplyAndClose(FramedConnection& connection, const v1::HandoffAck& ack);
// The sender's side of it: reads one ack frame.
absl::StatusOr<v1::HandoffAck> ReadAckFrame(FramedConnection& connection);

}  // namespace indexcache
