// The prefill → decode handoff, independent of how bytes travel. A handoff is the ordered stream of
// HandoffChunk messages of one request (proto/indexcache/v1/internal.proto): header, cache rows as
// prefill chunks complete, trailer. The prefill worker pushes it through a HandoffSender; on the decode
// worker a transport server hands each received chunk to the worker's HandoffSink, whose verdict
// travels back as the HandoffAck. Each transport lives in its own folder (grpc/, tcp/, nccl/) and
// opens senders through a HandoffConnector; a worker's set of them is a HandoffTransports
// (handoff_transports.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/kv/landed_rows.h"
#include "indexcache/v1/internal.pb.h"

namespace indexcache {

namespace v1 = ::indexcache::v1;

// Largest serialized chunk either transport accepts; a prefill worker splits its rows to stay below.
inline constexpr size_t kMaxHandoffChunkBytes = size_t{64} << 20;

// Bytes a handoff put on the wire, by payload kind (what IndexCache's Shared layers never send shows
// up as index-key bytes that are not there).
struct HandoffByteCounts {
  uint64_t latent_bytes = 0;
  uint64_t index_key_bytes = 0;
  uint64_t metadata_bytes = 0;  // everything else: header, trailer, framing, protobuf overhead
  uint32_t chunks = 0;
};

// A rows chunk's bytes: `rows_data` when the caller holds them outside the message (the engine's
// export staging, sent from where they lie), else the message's own `rows.data`.
inline std::string_view RowsData(const v1::HandoffChunk& chunk, std::string_view rows_data) {
  return rows_data.empty() ? std::string_view(chunk.rows().data()) : rows_data;
}

// Adds one chunk that took `wire_bytes` on the wire: its rows bytes (`rows_data` as in RowsData) to
// their kind, the rest (fields, framing) to metadata.
void CountChunkBytes(const v1::HandoffChunk& chunk, std::string_view rows_data, uint64_t wire_bytes,
                     HandoffByteCounts& counts);

// Client side of one handoff.
class HandoffSender {
 public:
  virtual ~HandoffSender() = default;
  // Sends one chunk (its checksum already sealed). A rows chunk's bytes are `rows_data` when not
  // empty (the message's rows.data is then empty): the transport writes them from there, never
  // through a copy in the message, except gRPC, whose messages must hold them. Blocks while the
  // transport is backed up; fails once the peer has rejected the handoff or the connection broke.
  virtual absl::Status Send(const v1::HandoffChunk& chunk, std::string_view rows_data) = 0;
  // A chunk that holds its own rows bytes (tests, tools).
  absl::Status Send(const v1::HandoffChunk& chunk) { return Send(chunk, {}); }
  // A rows chunk whose `bytes` bytes lie in device memory at `device_rows` (the engine's device
  // staging), its checksum not sealed yet: the host cannot read them, so the transport computes their
  // CRC-32 on the GPU, seals its copy of the chunk and sends them from where they lie. Only a transport whose
  // capabilities() has device_memory takes them; others fail with FAILED_PRECONDITION.
  virtual absl::Status SendDeviceRows(const v1::HandoffChunk& chunk, const char* device_rows, size_t bytes);
  // After the trailer: closes the stream and waits for the decode worker's verdict, an ack accepted or
  // not (AckStatus turns a rejection back into its status); an error only when no verdict came
  // (connection broke, cancelled). After a Send that failed on a rejection, returns that ack.
  virtual absl::StatusOr<v1::HandoffAck> Finish() = 0;
  // Abandons the handoff; the decode worker sees a broken stream and frees what it holds. Safe from
  // any thread, also while Send or Finish block (they then fail with CANCELLED).
  virtual void Cancel() = 0;
  virtual const HandoffByteCounts& bytes() const = 0;
};

// What a transport can do, as reported by its connector.
struct HandoffCapabilities {
  // Sends from and receives into device memory (SendDeviceRows; LandRows asked for kDevice), so a
  // CUDA pool's rows need no host staging. NCCL's, when its GPU is the engine's (nccl/README.md).
  bool device_memory = false;
  // Sets up state per decode worker on the first handoff to it and keeps it for the next ones (NCCL:
  // a communicator, about 0.7 s to make): the connector is long-lived and shared by the worker's jobs,
  // and a first handoff is slower than the next.
  bool needs_peer_setup = false;
};

// Prefill side of one transport: opens handoffs. Thread-safe; must outlive the senders it returns.
class HandoffConnector {
 public:
  virtual ~HandoffConnector() = default;
  virtual v1::HandoffTransport transport() const = 0;
  // Short lower-case name ("grpc", "tcp", "nccl"), as in flags and logs.
  virtual std::string_view name() const = 0;
  virtual HandoffCapabilities capabilities() const = 0;
  // A handoff to the decode worker's endpoint for this transport (`address`, "host:port"), failing
  // after `connect_timeout`.
  virtual absl::StatusOr<std::unique_ptr<HandoffSender>> Connect(const std::string& address,
                                                                 absl::Duration connect_timeout) = 0;
};

// Decode-worker side: receives the chunks of every incoming handoff, one stream at a time per request.
class HandoffSink {
 public:
  virtual ~HandoffSink() = default;
  // Memory for the `bytes` of a rows chunk's data that a transport receives apart from the chunk's
  // message (TCP: the frame's payload), `chunk` holding the rest: the transport reads the
  // bytes straight into it and hands them to OnChunk as `rows`. Empty (the default): they go into
  // the message's rows.data. An error ends the stream as a broken one.
  // A transport that receives onto the GPU asks for `memory` kDevice: the sink's device area, or an
  // error when it has none.
  virtual absl::StatusOr<LandedRows> LandRows(const v1::HandoffChunk& chunk, size_t bytes,
                                              RowsMemory memory = RowsMemory::kHost) {
    if (memory == RowsMemory::kDevice) {
      return absl::FailedPreconditionError("rows sent to device memory, but this sink has none to land them in");
    }
    return LandedRows{};
  }
  // Each chunk of a stream, in arrival order, with its rows bytes in `rows` when they landed in
  // LandRows's memory (rows.data then empty). `chunk` is the transport's receive buffer, not read
  // again: the sink may move the rows bytes out of it instead of copying them. A non-OK status
  // rejects the handoff: the transport stops reading, answers the sender with the error, and calls
  // nothing else for this stream.
  virtual absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows rows) = 0;
  // The sender finished the stream after the chunk naming `request_id`'s trailer was accepted.
  virtual v1::HandoffAck OnComplete(const std::string& request_id) = 0;
  // The stream broke (peer gone, cancelled, malformed frame) before completing. `request_id` may be
  // empty when nothing identifying arrived.
  virtual void OnBroken(const std::string& request_id, const absl::Status& why) = 0;
};

// The decode worker's verdict as a HandoffAck: accepted when OK, else the status as "CODE: message".
v1::HandoffAck MakeAck(const absl::Status& status);
// The reverse, for senders: OK when accepted, else the rejection with its code restored
// (UNKNOWN when the text names no code).
absl::Status AckStatus(const v1::HandoffAck& ack);

// CRC-32 (zlib) of the chunk's body (header, rows or trailer, serialized), the rows bytes taken as in
// RowsData; SealChunk stores it.
uint32_t ChunkChecksum(const v1::HandoffChunk& chunk, std::string_view rows_data = {});
void SealChunk(v1::HandoffChunk& chunk, std::string_view rows_data = {});
// DATA_LOSS when the stored checksum does not match the body (the rows bytes taken as in RowsData).
absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, std::string_view rows_data = {});
// The same for a rows chunk whose rows bytes lie where the host cannot read them (device memory):
// they are stood for by their own CRC-32, computed where they lie, and their length.
struct RowsCrc {
  uint32_t crc = 0;
  size_t bytes = 0;
};
uint32_t ChunkChecksum(const v1::HandoffChunk& chunk, RowsCrc rows);
void SealChunk(v1::HandoffChunk& chunk, RowsCrc rows);
absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, RowsCrc rows);
// The check a sink makes of a received chunk, wherever its rows landed: device rows by the CRC the
// transport computed (DATA_LOSS when it computed none), host rows by their bytes.
absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, const LandedRows& rows);

}  // namespace indexcache
