// The inference engine: a model, its paged cache and a continuous-batching scheduler. Callers submit
// requests and call Step(); each step runs one forward pass over a token budget — one token for every
// decoding sequence first (latency), then prompt chunks of waiting sequences in arrival order — samples
// the sequences that reached a next token, and reports what each produced. Prompts are prefilled in
// chunks, so memory stays linear in prompt length. When the cache runs short for a decoding sequence,
// the most recently admitted one is preempted (its blocks freed, its tokens re-prefilled later), so no
// request is lost.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/kv/kv_transfer.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "common/sampling/sampler.h"
#include "common/sampling/sampling_params.h"
#include "common/sampling/stop_checker.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/incremental_decoder.h"

namespace indexcache {

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";
  int num_threads = 0;              // 0: all cores
  std::string index_pattern;        // "FSSS…" overriding the checkpoint's pattern
  int32_t index_freq = 0;           // > 0: transformers' freq schedule (offset from the config)
  size_t kv_cache_bytes = size_t{1} << 30;
  int32_t block_size = 64;
  int32_t max_batch_tokens = 512;   // tokens per forward pass (the prefill chunk size)
  bool cuda_graphs = true;          // replay decode steps as CUDA graphs (--device cuda only)
};

using RequestId = int64_t;

// kPrefillDone ends a prefill-only request (disaggregated serving): its first token is sampled and
// its cache is held for export until Release.
enum class RequestFinish { kNone, kStop, kLength, kAbort, kError, kPrefillDone };
const char* RequestFinishName(RequestFinish finish);

// What one request produced in one step.
struct TokenEvent {
  RequestId request = 0;
  int32_t token = -1;          // -1 when the event carries no token (abort, error)
  std::string text;            // detokenized text released now (empty without a tokenizer)
  RequestFinish finish = RequestFinish::kNone;
  absl::Status error;          // set when finish == kError
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);

  const ModelConfig& config() const { return model_->config(); }
  const BpeTokenizer* tokenizer() const { return tokenizer_.get(); }
  const PagedKvCache& cache() const { return *cache_; }
  DsaModel& model() { return *model_; }

  // Validates and queues a request: non-empty prompt of in-vocabulary ids, valid sampling params,
  // prompt + max_new_tokens within the model's positions and the whole cache.
  absl::StatusOr<RequestId> Submit(std::vector<int32_t> prompt, const SamplingParams& params);
  // Ends a request now; its next Step reports kAbort and its cache blocks are freed. Unknown ids: no-op.
  void Abort(RequestId id);
  // True while some request can make progress in Step (held and importing requests wait outside).
  bool HasWork() const;
  size_t num_requests() const { return requests_.size(); }
  // Runs one scheduling step. Requests that fail end with a kError event; the engine keeps serving.
  absl::StatusOr<std::vector<TokenEvent>> Step();

  // Runs `ids` as one prompt through chunked prefill, handing every chunk's result (logits of all its
  // positions; per-layer top-k when captured) to `on_chunk` together with the chunk's first position.
  absl::Status ScoreChunks(const std::vector<int32_t>& ids, bool capture_topk,
                           const std::function<absl::Status(int32_t, const ForwardResult&)>& on_chunk);

  IndexCacheStats TakeStats() { return model_->TakeStats(); }
  const std::string& model_fingerprint() const { return fingerprint_; }

  // --- disaggregated serving: the prefill side ----------------------------------------------
  // Like Submit, but the request ends at its first sampled token (event kPrefillDone) and keeps its
  // cache, so the prompt's rows can be exported as chunks complete, until Release.
  absl::StatusOr<RequestId> SubmitPrefill(std::vector<int32_t> prompt, const SamplingParams& params);
  // Prompt positions already in the cache (grows chunk by chunk during prefill).
  absl::StatusOr<int32_t> CachedTokens(RequestId id) const;
  absl::StatusOr<std::vector<float>> ExportRows(RequestId id, int32_t layer, KvRowKind kind, int32_t begin,
                                                int32_t count);
  // The last prompt position's indexer inputs and selection per Full layer (after kPrefillDone).
  absl::StatusOr<std::vector<IndexerProbe>> TakeProbes(RequestId id);
  // Frees a held (prefill-done) request. Unknown ids: no-op.
  void Release(RequestId id);

  // --- disaggregated serving: the decode side -------------------------------------------------
  // Validates like Submit and reserves cache for the prompt; RESOURCE_EXHAUSTED when the cache is
  // short now (retry later). The request waits for its rows until StartDecode.
  absl::StatusOr<RequestId> AdmitImport(std::vector<int32_t> prompt, const SamplingParams& params);
  absl::Status ImportRows(RequestId id, int32_t layer, KvRowKind kind, int32_t begin, int32_t count,
                          const float* rows);
  // Re-runs the probe's indexer over the imported index keys; DATA_LOSS when the selection differs.
  absl::Status VerifyProbe(RequestId id, const IndexerProbe& probe);
  // Appends the prefill worker's first token and starts decoding; returns that token's event
  // (text, and a finish if it already ends the request).
  absl::StatusOr<TokenEvent> StartDecode(RequestId id, int32_t first_token);

 private:
  struct Request {
    RequestId id = 0;
    std::vector<int32_t> tokens;  // prompt + generated
    int32_t prompt_len = 0;
    int32_t num_cached = 0;       // positions already in the cache
    bool aborted = false;
    bool prefill_only = false;     // ends at the first token and holds its cache
    bool held = false;             // prefill done: cache kept for export, not scheduled
    bool awaiting_import = false;  // decode side: rows arriving, not scheduled yet
    bool greedy = false;           // temperature 0: the device's argmax is its token
    std::vector<IndexerProbe> probes;
    std::optional<Sampler> sampler;
    std::optional<StopChecker> stop;
    std::optional<IncrementalDecoder> detok;
  };

  Engine() = default;
  // `prefill_only`: the request caches its prompt alone (the decode worker holds the generated tokens),
  // so only the prompt has to fit this engine's cache.
  absl::Status ValidateRequest(const std::vector<int32_t>& prompt, const SamplingParams& params,
                               bool prefill_only) const;
  absl::StatusOr<Request> MakeRequest(std::vector<int32_t> prompt, const SamplingParams& params, bool prefill_only);
  absl::StatusOr<Request*> Find(RequestId id);
  // Records a sampled or imported token: detokenizes, checks stop conditions.
  TokenEvent Accept(Request& r, int32_t token);
  // Picks this step's tokens; preempts when a decoding request cannot grow.
  ForwardBatch Schedule(std::vector<Request*>& in_batch);
  void Preempt(Request& r);
  // Takes the request's next token: `token` is its sampled token, or why none could be drawn.
  TokenEvent Advance(Request& r, const absl::StatusOr<int32_t>& token);
  void Finish(RequestId id);

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<DsaModel> model_;
  std::unique_ptr<PagedKvCache> cache_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::string fingerprint_;
  int32_t max_batch_tokens_ = 0;
  RequestId next_id_ = 1;
  std::deque<RequestId> order_;  // admission order
  absl::flat_hash_map<RequestId, Request> requests_;
};

}  // namespace indexcache
