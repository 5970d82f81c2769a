// The checksum is CRC-32 (zlib's polynomial) of the chunk's serialized body. A rows body is never
// serialized whole: protobuf writes KvRows' fields in field order and `data` (field 5) is the last,
// so the serialization is [the other fields][tag 5, varint length][the rows bytes]; the CRC runs
// over the first two parts (a few bytes) and then straight over the rows bytes, wherever they lie
// (the export's staging memory on a sender, the received frame on a receiver). ISA-L's
// crc32_gzip_refl is the same CRC as zlib's crc32 at folding speed (PCLMULQDQ), which matters at
// gigabytes per handoff. Rows in device memory come with their own CRC-32 (computed on the GPU by the
// transport that moves them, nccl/device_crc32.h), which is combined with the prefix's.
#include <isa-l/crc.h>

#include <string>

#include "absl/strings/str_format.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/crc32_combine.h"
#include "google/protobuf/io/coded_stream.h"

namespace indexcache {
namespace {

uint32_t Crc(uint32_t crc, std::string_view bytes) {
  return crc32_gzip_refl(crc, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

// The serialized KvRows up to (not including) the rows bytes: every field but `data`, then `data`'s
// tag and length when the rows are not empty (proto3 omits an empty bytes field).
std::string RowsPrefix(const v1::KvRows& rows, size_t data_bytes) {
  v1::KvRows fields;
  fields.set_layer(rows.layer());
  fields.set_kind(rows.kind());
  fields.set_begin_position(rows.begin_position());
  fields.set_num_tokens(rows.num_tokens());
  std::string prefix = fields.SerializeAsString();
  if (data_bytes > 0) {
    constexpr uint32_t kDataTag = (v1::KvRows::kDataFieldNumber << 3) | 2;  // length-delimited
    google::protobuf::io::StringOutputStream out(&prefix);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.WriteVarint32(kDataTag);
    coded.WriteVarint64(data_bytes);
  }
  return prefix;
}

}  // namespace

uint32_t ChunkChecksum(const v1::HandoffChunk& chunk, std::string_view rows_data) {
  switch (chunk.body_case()) {
    case v1::HandoffChunk::kHeader:
      return Crc(0, chunk.header().SerializeAsString());
    case v1::HandoffChunk::kTrailer:
      return Crc(0, chunk.trailer().SerializeAsString());
    case v1::HandoffChunk::kRows: {
      const std::string_view data = RowsData(chunk, rows_data);
      return Crc(Crc(0, RowsPrefix(chunk.rows(), data.size())), data);
    }
    case v1::HandoffChunk::BODY_NOT_SET:
      break;
  }
  return 0;
}

uint32_t ChunkChecksum(const v1::HandoffChunk& chunk, RowsCrc rows) {
  if (!chunk.has_rows()) return ChunkChecksum(chunk, std::string_view());
  return CombineCrc32(Crc(0, RowsPrefix(chunk.rows(), rows.bytes)), rows.crc, rows.bytes);
}

void SealChunk(v1::HandoffChunk& chunk, std::string_view rows_data) {
  chunk.set_checksum(ChunkChecksum(chunk, rows_data));
}

void SealChunk(v1::HandoffChunk& chunk, RowsCrc rows) { chunk.set_checksum(ChunkChecksum(chunk, rows)); }

namespace {

absl::Status CompareChecksum(const v1::HandoffChunk& chunk, uint32_t computed) {
  if (computed != chunk.checksum()) {
    return absl::DataLossError(absl::StrFormat(
        "handoff chunk %d of request '%s' is corrupt: checksum 0x%08x, computed 0x%08x", chunk.sequence(),
        chunk.request_id(), chunk.checksum(), computed));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, std::string_view rows_data) {
  return CompareChecksum(chunk, ChunkChecksum(chunk, rows_data));
}

absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, RowsCrc rows) {
  return CompareChecksum(chunk, ChunkChecksum(chunk, rows));
}

absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk, const LandedRows& rows) {
  if (!rows.on_device()) return VerifyChunkChecksum(chunk, rows.view());
  if (!rows.crc.has_value()) {
    return absl::DataLossError(absl::StrFormat(
        "handoff chunk %d of request '%s': its rows landed in device memory without a checksum to check them by",
        chunk.sequence(), chunk.request_id()));
  }
  return VerifyChunkChecksum(chunk, RowsCrc{.crc = *rows.crc, .bytes = rows.size});
}

}  // namespace indexcache
