#include "common/handoff/handoff_transport.h"

#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"

namespace indexcache {

void CountChunkBytes(const v1::HandoffChunk& chunk, std::string_view rows_data, uint64_t wire_bytes,
                     HandoffByteCounts& counts) {
  uint64_t rows_bytes = 0;
  if (chunk.has_rows()) {
    rows_bytes = RowsData(chunk, rows_data).size();
    if (chunk.rows().kind() == v1::INDEX_KEY) {
      counts.index_key_bytes += rows_bytes;
    } else {
      counts.latent_bytes += rows_bytes;
    }
  }
  counts.metadata_bytes += wire_bytes - rows_bytes;
  ++counts.chunks;
}

absl::Status HandoffSender::SendDeviceRows(const v1::HandoffChunk& chunk, const char* /*device_rows*/, size_t bytes) {
  return absl::FailedPreconditionError(absl::StrCat("chunk ", chunk.sequence(), ": ", bytes,
                                                    " bytes of rows in device memory, which this transport cannot send"));
}

v1::HandoffAck MakeAck(const absl::Status& status) {
  v1::HandoffAck ack;
  ack.set_accepted(status.ok());
  if (!status.ok()) ack.set_error(status.ToString());
  return ack;
}

absl::Status AckStatus(const v1::HandoffAck& ack) {
  if (ack.accepted()) return absl::OkStatus();
  const absl::string_view error = ack.error();
  // absl::Status::ToString writes "CODE_NAME: message"; the codes are 1..16.
  for (int code = 1; code <= 16; ++code) {
    const auto status_code = static_cast<absl::StatusCode>(code);
    const std::string prefix = absl::StrCat(absl::StatusCodeToString(status_code), ": ");
    if (error.substr(0, prefix.size()) == prefix) {
      return absl::Status(status_code,
                          absl::StrCat("the decode worker rejected the handoff: ", error.substr(prefix.size())));
    }
  }
  return absl::UnknownError(absl::StrCat("the decode worker rejected the handoff: ", error));
}

}  // namespace indexcache
