#include "common/handoff/tcp/rows_frame_bound.h"

#include <string_view>

#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

// Bytes of one value of the dtypes the KV pools store, by their wire names (tensor.h's DTypeName).
std::optional<uint64_t> ValueBytes(std::string_view dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16") return 2;
  return std::nullopt;
}

}  // namespace

void RowsFrameBound::Announce(const v1::HandoffHeader& header) { header_ = header; }

absl::Status RowsFrameBound::Check(const v1::KvRows& rows, uint64_t payload_bytes) const {
  if (!header_.has_value()) return absl::InvalidArgumentError("a rows frame arrived before the handoff's header");
  const std::optional<uint64_t> value_bytes = ValueBytes(header_->dtype());
  if (!value_bytes.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the handoff's header names rows of dtype '%s', which no KV pool stores",
                        header_->dtype().substr(0, 16)));
  }
  const int64_t width = rows.kind() == v1::INDEX_KEY ? header_->index_key_dim() : header_->latent_dim();
  const int64_t tokens = rows.num_tokens();
  if (tokens < 0 || tokens > header_->prompt_tokens() || width < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a rows frame of %d tokens of width %d in a handoff of a %d-token prompt", tokens, width,
        header_->prompt_tokens()));
  }
  const uint64_t allowed = static_cast<uint64_t>(tokens) * static_cast<uint64_t>(width) * *value_bytes;
  if (payload_bytes > allowed) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a rows frame announces %d bytes; its %d rows of width %d in %s allow at most %d, as the header says",
        payload_bytes, tokens, width, header_->dtype(), allowed));
  }
  return absl::OkStatus();
}

}  // namespace indexcache
