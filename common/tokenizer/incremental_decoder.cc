#include "common/tokenizer/incremental_decoder.h"

#include "common/tokenizer/byte_unicode.h"
#include "common/util/status_macros.h"

namespace indexcache {

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  const int32_t ids[] = {id};
  ASSIGN_OR_RETURN(std::string bytes, tokenizer_->Decode(ids, skip_special_tokens_));
  pending_.append(bytes);
  // The held-back tail starts at a lead byte, which no earlier sequence can absorb, so emitting
  // the part before it now gives the same text as decoding everything at the end.
  const size_t hold = IncompleteUtf8Suffix(pending_);
  std::string ready = Utf8Lossy(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return ready;
}

std::string IncrementalDecoder::Flush() {
  std::string rest = Utf8Lossy(pending_);
  pending_.clear();
  return rest;
}

}  // namespace indexcache
