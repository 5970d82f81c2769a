// One admitted request on the decode worker, shared by three threads: the Decode call that admitted it
// (waits for its output and streams it), the handoff transport (feeds it chunks through the
// HandoffImporter) and the engine loop (posts its token events). Its engine request exists from
// AdmitImport until it ends; every way of ending frees the request's KV blocks exactly once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/engine/engine_loop.h"
#include "common/kv/kv_segment.h"

namespace indexcache {

class DecodeSession : public std::enable_shared_from_this<DecodeSession> {
 public:
  // Where the request stands. The handoff moves it from kAwaitingHeader to kDecoding.
  enum class Phase {
    kAwaitingHeader,   // admitted: KV reserved, no chunk yet
    kRows,             // header accepted: rows arriving
    kTrailerVerified,  // rows complete, probes verified: waiting for the stream's end
    kDecoding,         // StartDecode done: the engine streams its events
    kEnded,            // failed, aborted or finished; the engine request is gone or going
  };

  // `cached_tokens`: the prompt's leading positions this worker's prefix cache held at admission; the
  // handoff brings the rest. `pattern`: the engine's pattern for the request (Engine::PatternFor).
  DecodeSession(std::string request_id, RequestId engine_id, int32_t prompt_tokens, int32_t cached_tokens,
                int32_t pattern, absl::Time admitted_at);

  const std::string& request_id() const { return request_id_; }
  RequestId engine_id() const { return engine_id_; }
  int32_t prompt_tokens() const { return prompt_tokens_; }
  int32_t cached_tokens() const { return cached_tokens_; }
  int32_t pattern() const { return pattern_; }
  absl::Time admitted_at() const { return admitted_at_; }

  // Received rows not in the cache yet.
  struct PendingRows {
    int32_t layer = 0;
    KvRowKind kind = KvRowKind::kLatent;
    int32_t begin = 0;
    int32_t count = 0;
    LandedRows rows;  // [count, width] in the cache's dtype, where they were received
  };
  // The handoff's state, owned by whoever holds import_mu (the importer, chunk by chunk).
  struct Import {
    Phase phase = Phase::kAwaitingHeader;
    uint32_t next_sequence = 0;
    std::vector<int32_t> latent_rows;     // per layer: positions [0, n) held (cached, then received)
    std::vector<int32_t> index_key_rows;  // per layer (Full layers only)
    size_t bytes_to_come = 0;             // rows of the prompt not received yet
    int32_t first_token = -1;
    std::optional<TokenLogprobs> first_logprobs;  // when the trailer carried them
    absl::Time decode_started_at;
  };
  std::mutex import_mu;
  Import import;  // guarded by import_mu

  // Received rows wait here for the engine loop, which writes them into the cache without the
  // transport thread waiting for it. At most one import is queued on the loop at a time and it takes
  // everything that arrived by the time it runs.
  // Queues `rows`; true when the caller must post an import: none is queued and the rows waiting
  // weigh at least `batch_bytes`.
  bool QueueRows(PendingRows rows, size_t batch_bytes);
  // For the queued import, on the loop: every row queued so far (the next QueueRows posts again).
  std::vector<PendingRows> TakeRows();
  // The first write into the cache that failed is kept here (any thread) for the trailer's check.
  void RecordImportError(const absl::Status& status);
  absl::Status import_error() const;

  // Ends the request with `why` (the Decode call returns it as its status) and frees its KV:
  // Release before decoding, Abort once decoding. No-op once ended. Takes import_mu.
  void Fail(EngineLoop& loop, const absl::Status& why);
  // Ends the request as aborted (the Decode call sends finish_reason ABORT). Takes import_mu.
  void Abort(EngineLoop& loop);
  // Frees the KV of a request whose import_mu the caller holds; sets kEnded.
  void EndLocked(EngineLoop& loop);
  // The engine finished the request on its own (its finish event arrived): nothing left to free.
  void Finished();

  // --- output, in order, for the Decode call ---------------------------------------------------
  // From the engine loop (must not block) or the importer: one event of the request.
  void Push(const TokenEvent& event);
  struct Output {
    std::vector<TokenEvent> events;
    absl::Status failure;  // set once the request failed; events before it still count
  };
  // Takes what arrived, waiting up to `timeout` for something.
  Output Take(absl::Duration timeout);

 private:
  void PushFailure(const absl::Status& why);

  const std::string request_id_;
  const RequestId engine_id_;
  const int32_t prompt_tokens_;
  const int32_t cached_tokens_;
  const int32_t pattern_;
  const absl::Time admitted_at_;

  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::deque<TokenEvent> events_;  // guarded by out_mu_
  absl::Status failure_;           // guarded by out_mu_

  std::mutex rows_mu_;  // not import_mu: the loop takes rows while the trailer's check holds that
  std::vector<PendingRows> rows_;  // guarded by rows_mu_
  size_t rows_bytes_ = 0;          // guarded by rows_mu_
  bool import_queued_ = false;     // guarded by rows_mu_

  mutable std::mutex import_error_mu_;
  absl::Status import_error_;  // guarded by import_error_mu_
};

}  // namespace indexcache
