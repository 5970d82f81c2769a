#include "common/sampling/stop_checker.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace indexcache {

StopChecker::StopChecker(const SamplingParams& params, absl::Span<const int32_t> eos_token_ids)
    : stop_ids_(params.stop_token_ids.begin(), params.stop_token_ids.end()),
      stop_strings_(params.stop_strings),
      max_new_tokens_(params.max_new_tokens) {
  if (!params.ignore_eos) {
    stop_ids_.insert(stop_ids_.end(), eos_token_ids.begin(), eos_token_ids.end());
  }
}

absl::StatusOr<StopUpdate> StopChecker::Append(int32_t token_id, std::string_view text_delta) {
  if (finish_ != FinishReason::kNone) {
    return absl::FailedPreconditionError(
        absl::StrFormat("token %d fed to a sequence that already finished after %d tokens",
                        token_id, num_generated_));
  }
  ++num_generated_;
  if (std::find(stop_ids_.begin(), stop_ids_.end(), token_id) != stop_ids_.end()) {
    return Finish(FinishReason::kStop, held_.size());
  }
  held_.append(text_delta);

  // The earliest-starting stop string in the held text wins; nothing before held_ can match.
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    stop_at = std::min(stop_at, held_.find(stop));
  }
  if (stop_at != std::string::npos) return Finish(FinishReason::kStop, stop_at);
  if (num_generated_ >= max_new_tokens_) return Finish(FinishReason::kLength, held_.size());

  const size_t emit = held_.size() - PendingPrefixLength();
  StopUpdate update;
  update.text = held_.substr(0, emit);
  held_.erase(0, emit);
  return update;
}

std::string StopChecker::Flush() {
  std::string text;
  text.swap(held_);
  return text;
}

StopUpdate StopChecker::Finish(FinishReason reason, size_t emit_prefix) {
  finish_ = reason;
  StopUpdate update;
  update.finish = reason;
  update.text = held_.substr(0, emit_prefix);
  held_.clear();
  return update;
}

size_t StopChecker::PendingPrefixLength() const {
  size_t longest = 0;
  for (const std::string& stop : stop_strings_) {
    // Suffixes of held_ of length len < |stop|, longest first; the first that starts `stop` wins.
    for (size_t len = std::min(held_.size(), stop.size() - 1); len > longest; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(stop).substr(0, len)) {
        longest = len;
        break;
      }
    }
  }
  return longest;
}

}  // namespace indexcache
