// What a TCP handoff stream's header announces bounds each of its rows frames before the frame's
// payload is read (issue 13): a rows chunk of `num_tokens` rows of one kind carries num_tokens × that
// kind's width (latent_dim or index_key_dim) × the dtype's size bytes, and no more rows than the
// prompt has tokens. A frame announcing more is refused once its prefix and metadata are read, before
// any payload byte is read or allocated. The receiving sink still checks the exact size, and the rows
// against its own model, after the read (handoff_importer.h).
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "indexcache/v1/internal.pb.h"

namespace indexcache {

class RowsFrameBound {
 public:
  // The stream's header chunk.
  void Announce(const v1::HandoffHeader& header);
  // OK when a rows frame whose metadata is `rows` may carry `payload_bytes`; INVALID_ARGUMENT naming
  // what the header allows otherwise (also for rows before any header, or a dtype it does not know).
  absl::Status Check(const v1::KvRows& rows, uint64_t payload_bytes) const;

 private:
  std::optional<v1::HandoffHeader> header_;
};

}  // namespace indexcache
