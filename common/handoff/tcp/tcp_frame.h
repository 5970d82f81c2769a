// The TCP handoff data plane's wire format and the timed, blocking framed connection both ends use.
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

struct FramePrefix {
  FrameKind kind = FrameKind::kChunk;
  uint32_t metadata_bytes = 0;
  uint64_t payload_bytes = 0;
};

std::array<uint8_t, kFramePrefixBytes> EncodeFramePrefix(const FramePrefix& prefix);
// INVALID_ARGUMENT for a wrong magic, version or kind, or a length past the bounds.
absl::StatusOr<FramePrefix> DecodeFramePrefix(const std::array<uint8_t, kFramePrefixBytes>& bytes);

// One TCP connection with blocking frame I/O, each operation bounded by `io_timeout` (DEADLINE_EXCEEDED
// past it). Used by one thread at a time, except Interrupt, which any thread may call.
class FramedConnection {
 public:
  explicit FramedConnection(absl::Duration io_timeout);
  ~FramedConnection();
  FramedConnection(const FramedConnection&) = delete;
  FramedConnection& operator=(const FramedConnection&) = delete;

  // For an acceptor to accept into.
  boost::asio::ip::tcp::socket& socket() { return socket_; }
  // Call once the socket is open (after an accept), so Interrupt can reach it.
  void Opened();

  absl::Status Connect(const std::string& host, uint16_t port, absl::Duration timeout);
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
  std::mutex fd_mu_;
  int fd_ = -1;  // guarded by fd_mu_: the descriptor Interrupt shuts down, -1 once closed
};

// A rows chunk with everything but rows.data (which travels apart from the metadata, as a frame's
// payload or over NCCL), without copying the rows.
v1::HandoffChunk WithoutRowsData(const v1::HandoffChunk& chunk);

// The server's last word on a connection (TCP and NCCL handoffs): the ack frame, then DrainAndClose.
void ReplyAndClose(FramedConnection& connection, const v1::HandoffAck& ack);
// The sender's side of it: reads one ack frame.
absl::StatusOr<v1::HandoffAck> ReadAckFrame(FramedConnection& connection);

}  // namespace indexcache
