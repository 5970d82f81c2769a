// Decides, token by token, when one sequence ends and which text may be streamed to the client now.
//
// Stop strings can span tokens ("EN" + "D"), so text that could still become a stop string is held
// back until it is resolved: with stop "abc", "xab" emits "x" and holds "ab"; a following "d" emits
// "abd". When a stop string appears, the text ends just before it (the stop string is not emitted,
// as in the OpenAI API and vLLM) and anything after it is dropped. A stop token id, or an EOS id
// unless ignore_eos, ends the sequence with kStop and its text is not emitted; reaching
// max_new_tokens ends it with kLength. A stop string completing on the last allowed token is kStop.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/sampling/sampling_params.h"

namespace indexcache {

enum class FinishReason { kNone, kStop, kLength };

struct StopUpdate {
  FinishReason finish = FinishReason::kNone;
  // Text to stream now. The update that finishes the sequence carries all remaining held text.
  std::string text;
};

class StopChecker {
 public:
  // `params` should have passed Validate(); `eos_token_ids` are the model's end-of-sequence ids.
  StopChecker(const SamplingParams& params, absl::Span<const int32_t> eos_token_ids);

  // Feeds one generated token and the text its detokenisation added. Refuses a token fed after
  // the sequence finished (a caller bug that must not take the server down).
  [[nodiscard]] absl::StatusOr<StopUpdate> Append(int32_t token_id, std::string_view text_delta);

  // Returns (and forgets) the held-back text, for a sequence ended from outside (cancelled,
  // failed).
  std::string Flush();

  FinishReason finish_reason() const { return finish_; }
  int32_t num_generated() const { return num_generated_; }

 private:
  // Ends the sequence with `reason`, releasing `emit_prefix` bytes of the held text.
  StopUpdate Finish(FinishReason reason, size_t emit_prefix);
  // Length of the longest suffix of held_ that is a proper prefix of some stop string.
  size_t PendingPrefixLength() const;

  std::vector<int32_t> stop_ids_;  // stop_token_ids plus the EOS ids unless ignore_eos
  std::vector<std::string> stop_strings_;
  int32_t max_new_tokens_;
  int32_t num_generated_ = 0;
  FinishReason finish_ = FinishReason::kNone;
  // Generated text not yet emitted: never longer than the longest stop string minus one between
  // calls. No stop string can start in text already emitted (such text would have been held).
  std::string held_;
};

}  // namespace indexcache
