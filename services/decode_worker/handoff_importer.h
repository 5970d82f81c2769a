// The decode worker's HandoffSink: checks every incoming chunk against the admitted request it names
// and this worker's engine, and imports the rows (moved out of the received chunk, written into the
// pools as they came: the cache's dtype on both ends). Per request, in order: the header (model
// fingerprint, IndexCache pattern, prompt length, row widths and dtype must match this engine — a
// worker serving another model or pattern refuses), rows (each (layer, kind) contiguous from position
// 0; index keys of Full layers only), the trailer (all rows present; each Full layer's probe
// re-selects the same top-k from the received index keys), then the stream's end starts decoding
// with the prefill worker's first token. Any failure ends the request and frees its KV blocks.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/handoff_transport.h"
#include "services/decode_worker/decode_session.h"

namespace indexcache {

struct ImportOptions {
  // Received rows land in a host area of this size (pinned on CUDA: Engine::CreateReceiveArea), from
  // which the import copies them to the device; a transport waits while it is full.
  size_t receive_area_bytes = size_t{256} << 20;
  // Rows a transport receives onto the GPU (NCCL from device memory) land in a device area of this
  // size instead, from which the import copies them into the pools device to device; 0: none (a
  // transport asking for device memory is refused).
  size_t device_receive_area_bytes = 0;
  // Longest such wait before the handoff fails.
  absl::Duration receive_area_wait = absl::Seconds(60);
  // While much of the prompt is still to come, received rows go to the engine loop in batches of
  // `batch_bytes`, so the loop takes few large imports. Over the last `eager_tail_bytes` each chunk
  // goes in as it arrives, so what is left to import at the trailer is about one chunk.
  size_t batch_bytes = size_t{32} << 20;
  size_t eager_tail_bytes = size_t{64} << 20;
};

class HandoffImporter final : public HandoffSink {
 public:
  // INVALID_ARGUMENT when a batch could not fit the receive area (rows would wait for an import that
  // never comes); the area's allocation error.
  static absl::StatusOr<std::unique_ptr<HandoffImporter>> Create(EngineLoop& loop, const ImportOptions& options = {});

  // Makes the request's handoff acceptable; ALREADY_EXISTS when its id is in use.
  absl::Status Add(std::shared_ptr<DecodeSession> session);
  void Remove(const std::string& request_id);
  std::shared_ptr<DecodeSession> Find(const std::string& request_id) const;
  std::vector<std::shared_ptr<DecodeSession>> All() const;
  size_t size() const;
  // Handoffs refused or broken since start.
  uint64_t rejected() const { return rejected_; }

  // Rows of an admitted request land in the receive area of `memory`.
  absl::StatusOr<LandedRows> LandRows(const v1::HandoffChunk& chunk, size_t bytes, RowsMemory memory) override;
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows rows) override;
  v1::HandoffAck OnComplete(const std::string& request_id) override;
  void OnBroken(const std::string& request_id, const absl::Status& why) override;

 private:
  HandoffImporter(EngineLoop& loop, const ImportOptions& options, std::shared_ptr<LandingArea> receive_area,
                  std::shared_ptr<LandingArea> device_receive_area);

  // The state machine; the caller holds the session's import_mu.
  absl::Status Apply(DecodeSession& session, v1::HandoffChunk& chunk, LandedRows& rows);
  absl::Status CheckHeader(const v1::HandoffHeader& header, const DecodeSession& session) const;
  // Every row a prompt of this length ships: each layer's latent rows, the Full layers' index keys.
  size_t PromptRowBytes(const DecodeSession& session, int32_t prompt_tokens) const;
  // Validates the rows (`landed`, else the message's bytes) and queues them for the engine loop to
  // import (DecodeSession::QueueRows), without waiting for it: in batches, or at once near the end
  // (ImportOptions).
  absl::Status AcceptRows(DecodeSession& session, v1::KvRows& rows, LandedRows& landed);
  // Writes `batch` into the engine's cache; on the loop thread.
  static absl::Status ImportRows(Engine& engine, const DecodeSession& session,
                                 const std::vector<DecodeSession::PendingRows>& batch);
  absl::Status VerifyTrailer(DecodeSession& session, const v1::HandoffTrailer& trailer);
  // Ends the session with the handoff's failure.
  void Reject(DecodeSession& session, const absl::Status& why);

  EngineLoop& loop_;
  const ImportOptions options_;
  const std::shared_ptr<LandingArea> receive_area_;
  const std::shared_ptr<LandingArea> device_receive_area_;  // null without one
  // This engine's side of the header, read once.
  const std::string fingerprint_;
  const std::vector<std::pair<int32_t, std::string>> patterns_;  // the engine's (PatternSchedule::Named)
  const int32_t num_layers_;
  const int32_t latent_dim_;
  const int32_t index_key_dim_;
  const DType dtype_;  // the cache's: the rows' dtype on the wire
  const int32_t probe_query_size_;  // index_n_heads · index_head_dim
  const int32_t probe_heads_;       // index_n_heads
  const int32_t vocab_size_;

  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<DecodeSession>> sessions_;  // guarded by mu_
  std::atomic<uint64_t> rejected_{0};
};

}  // namespace indexcache
