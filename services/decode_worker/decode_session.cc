#include "services/decode_worker/decode_session.h"

#include <utility>

namespace indexcache {

DecodeSession::DecodeSession(std::string request_id, RequestId engine_id, int32_t prompt_tokens,
                             int32_t cached_tokens, int32_t pattern, absl::Time admitted_at)
    : request_id_(std::move(request_id)),
      engine_id_(engine_id),
      prompt_tokens_(prompt_tokens),
      cached_tokens_(cached_tokens),
      pattern_(pattern),
      admitted_at_(admitted_at) {}

void DecodeSession::EndLocked(EngineLoop& loop) {
  const Phase phase = import.phase;
  if (phase == Phase::kEnded) return;
  import.phase = Phase::kEnded;
  const RequestId id = engine_id_;
  if (phase == Phase::kDecoding) {
    // A scheduled request: the engine drops it (and frees its blocks) at its next step, sending the
    // subscribed sink its ABORT event.
    loop.Call([id](Engine& engine) { engine.Abort(id); });
  } else {
    // Not scheduled and not subscribed: free the blocks now.
    loop.Call([id](Engine& engine) { engine.Release(id); });
  }
}

void DecodeSession::Fail(EngineLoop& loop, const absl::Status& why) {
  std::lock_guard<std::mutex> lock(import_mu);
  if (import.phase == Phase::kEnded) return;
  // The failure first: the engine's ABORT event for the request, which may go out as soon as
  // EndLocked asked for it, must find it (Stream then ends the call with it, not a final message).
  PushFailure(why);
  EndLocked(loop);
}

void DecodeSession::Abort(EngineLoop& loop) {
  std::lock_guard<std::mutex> lock(import_mu);
  const Phase phase = import.phase;
  if (phase == Phase::kEnded) return;
  EndLocked(loop);
  // A decoding request's ABORT event comes from the engine; before that, there is none to wait for.
  if (phase != Phase::kDecoding) Push(TokenEvent::Ended(engine_id_, RequestFinish::kAbort));
}

bool DecodeSession::QueueRows(PendingRows rows, size_t batch_bytes) {
  std::lock_guard<std::mutex> lock(rows_mu_);
  rows_bytes_ += rows.rows.size;
  rows_.push_back(std::move(rows));
  if (import_queued_ || rows_bytes_ < batch_bytes) return false;
  import_queued_ = true;
  return true;
}

std::vector<DecodeSession::PendingRows> DecodeSession::TakeRows() {
  std::lock_guard<std::mutex> lock(rows_mu_);
  import_queued_ = false;
  rows_bytes_ = 0;
  return std::exchange(rows_, {});
}

void DecodeSession::RecordImportError(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(import_error_mu_);
  if (import_error_.ok()) import_error_ = status;
}

absl::Status DecodeSession::import_error() const {
  std::lock_guard<std::mutex> lock(import_error_mu_);
  return import_error_;
}

void DecodeSession::Finished() {
  std::lock_guard<std::mutex> lock(import_mu);
  import.phase = Phase::kEnded;
}

void DecodeSession::Push(const TokenEvent& event) {
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    events_.push_back(event);
  }
  out_cv_.notify_all();
}

void DecodeSession::PushFailure(const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    if (failure_.ok()) failure_ = why;
  }
  out_cv_.notify_all();
}

DecodeSession::Output DecodeSession::Take(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(out_mu_);
  out_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return !events_.empty() || !failure_.ok(); });
  Output out;
  out.events.assign(events_.begin(), events_.end());
  events_.clear();
  out.failure = failure_;
  return out;
}

}  // namespace indexcache
