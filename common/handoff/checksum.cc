// The checksum streams the body's serialization through a small buffer into crc32, so a multi-MB
// rows chunk is never serialized into a second whole copy.
#include <zlib.h>

#include <array>

#include "absl/strings/str_format.h"
#include "common/handoff/handoff_transport.h"
#include "google/protobuf/io/zero_copy_stream.h"

namespace indexcache {
namespace {

class Crc32Stream final : public google::protobuf::io::ZeroCopyOutputStream {
 public:
  bool Next(void** data, int* size) override {
    Flush();
    pending_ = buffer_.size();
    *data = buffer_.data();
    *size = static_cast<int>(buffer_.size());
    return true;
  }
  void BackUp(int count) override { pending_ -= static_cast<size_t>(count); }
  int64_t ByteCount() const override { return total_ + static_cast<int64_t>(pending_); }

  uint32_t Finish() {
    Flush();
    return static_cast<uint32_t>(crc_);
  }

 private:
  void Flush() {
    crc_ = crc32(crc_, buffer_.data(), static_cast<uInt>(pending_));
    total_ += static_cast<int64_t>(pending_);
    pending_ = 0;
  }

  std::array<Bytef, 64 * 1024> buffer_;
  size_t pending_ = 0;  // bytes of buffer_ handed out and not backed up
  int64_t total_ = 0;
  uLong crc_ = crc32(0L, Z_NULL, 0);
};

const google::protobuf::MessageLite* Body(const v1::HandoffChunk& chunk) {
  switch (chunk.body_case()) {
    case v1::HandoffChunk::kHeader:
      return &chunk.header();
    case v1::HandoffChunk::kRows:
      return &chunk.rows();
    case v1::HandoffChunk::kTrailer:
      return &chunk.trailer();
    case v1::HandoffChunk::BODY_NOT_SET:
      break;
  }
  return nullptr;
}

}  // namespace

uint32_t ChunkChecksum(const v1::HandoffChunk& chunk) {
  Crc32Stream stream;
  const google::protobuf::MessageLite* body = Body(chunk);
  if (body != nullptr) body->SerializeToZeroCopyStream(&stream);
  return stream.Finish();
}

void SealChunk(v1::HandoffChunk& chunk) { chunk.set_checksum(ChunkChecksum(chunk)); }

absl::Status VerifyChunkChecksum(const v1::HandoffChunk& chunk) {
  const uint32_t computed = ChunkChecksum(chunk);
  if (computed != chunk.checksum()) {
    return absl::DataLossError(absl::StrFormat(
        "handoff chunk %d of request '%s' is corrupt: checksum 0x%08x, computed 0x%08x", chunk.sequence(),
        chunk.request_id(), chunk.checksum(), computed));
  }
  return absl::OkStatus();
}

}  // namespace indexcache
