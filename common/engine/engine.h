// The inference engine: a model, its paged cache and a continuous-batching scheduler. Callers submit
// requests and call Step(); each step runs one forward pass over a token budget — one token for every
// decoding sequence first (latency), then prompt chunks of waiting sequences in arrival order — samples
// the sequences that reached a next token, and reports what each produced. Prompts are prefilled in
// chunks, so memory stays linear in prompt length. When the cache runs short for a decoding sequence,
// the most recently admitted one is preempted (its blocks freed, its tokens re-prefilled later), so no
// request is lost. With the prefix cache on, a request starts from the cached blocks of the longest
// prefix it shares with earlier or running requests and computes only the rest.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/backend/backend.h"
#include "common/kv/landing_area.h"
#include "common/kv/kv_segment.h"
#include "common/kv/paged_kv_cache.h"
#include "common/engine/step_sampler.h"
#include "common/model/dsa_model.h"
#include "common/model/pattern_schedule.h"
#include "common/sampling/logprobs.h"
#include "common/sampling/sampler.h"
#include "common/sampling/sampling_params.h"
#include "common/sampling/stop_checker.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/incremental_decoder.h"

namespace indexcache {

// One prompt-starting step in 64 carries reuse telemetry by default: under 1% of throughput on the
// measured workload (docs/performance.md) and still a few thousand rows per layer an hour on a busy worker.
inline constexpr double kDefaultReuseTelemetryRate = 1.0 / 64;

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";
  int num_threads = 0;              // 0: all cores
  std::string index_pattern;        // "FSSS…" overriding the checkpoint's pattern
  int32_t index_freq = 0;           // > 0: transformers' freq schedule (offset from the config)
  // An adaptive pattern (pattern_schedule.h): "N:PATTERN[,N:PATTERN…]", each pattern serving prompts
  // of at least N tokens; shorter prompts get the pattern above. Empty: one pattern for all.
  std::string length_patterns;
  size_t kv_cache_bytes = size_t{1} << 30;
  int32_t block_size = 64;
  int32_t max_batch_tokens = 512;   // tokens per forward pass (the prefill chunk size): see below
  bool cuda_graphs = true;          // replay decode steps as CUDA graphs (--device cuda only)
  // Share full KV blocks between requests with a common prefix (prefix_cache.h). On by default, as in
  // vLLM and SGLang: the output is the same token for token, a miss costs a hash per block, and
  // cached blocks nobody holds count as free memory.
  bool prefix_cache = true;
  // Reuse telemetry (common/model/reuse_telemetry.h): the share of the steps that start a prompt at
  // position 0 on which every Shared layer whose indexer weights the checkpoint kept also runs its
  // own indexer; 0 turns it off and loads no extra weights. The default's cost: docs/performance.md.
  double reuse_telemetry_rate = kDefaultReuseTelemetryRate;
};

// The prefill chunk a device runs well: 512 on the CPU (latency of a mixed batch), 8192 on CUDA, where
// a 512-token chunk leaves the GPU idle between launches (16K prompt, 16-layer model, H100: 203 ms in
// 512-token chunks, 63 ms in 8192-token ones) and the handoff ships fewer, larger segments.
int32_t DefaultMaxBatchTokens(std::string_view device);

using RequestId = int64_t;

// Receives a prefill-only request's rows as the engine computes them (SubmitPrefill). Called on the
// engine's thread; must not block.
class SegmentSink {
 public:
  virtual ~SegmentSink() = default;
  // The segment of the positions the step about to run computes; the pass fills it layer by layer
  // (kv_segment.h).
  virtual void Take(KvSegment segment) = 0;
  // False while the receiver is behind: the request computes no further chunk until it is true
  // again (backpressure: staging memory stays bounded however slow the peer). Whoever makes it true
  // again wakes the engine's driver (EngineLoop::Wake).
  virtual bool Ready() const = 0;
  // Where the segments' rows are staged: host memory, or device memory for a transport that sends
  // from the GPU.
  virtual RowsMemory memory() const { return RowsMemory::kHost; }
};

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
  // The token's log-probability and top alternatives, when its request asked (SamplingParams::logprobs).
  std::optional<TokenLogprobs> logprobs;

  // An event without a token: the request ended (abort, error).
  static TokenEvent Ended(RequestId request, RequestFinish finish, absl::Status error = absl::OkStatus()) {
    TokenEvent event;
    event.request = request;
    event.finish = finish;
    event.error = std::move(error);
    return event;
  }
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);

  // The model as loaded: with an adaptive pattern its indexer_types are every layer some pattern runs
  // Full (PatternSchedule::Loaded); patterns() says which pattern serves which request.
  const ModelConfig& config() const { return model_->config(); }
  const PatternSchedule& patterns() const { return patterns_; }
  // Per layer, whether pattern `pattern` (an index into patterns().patterns()) runs it Full: the
  // layers whose index keys its requests' caches and handoffs hold.
  const std::vector<bool>& FullLayersOf(int32_t pattern) const { return index_key_layers_[pattern]; }
  // The pattern a request of `prompt_tokens` runs, of which the last `resumed_tokens` were generated by
  // earlier attempts (SamplingParams::resumed_tokens): its client's prompt length chooses
  // (pattern_schedule.h). An index into patterns().patterns().
  int32_t PatternFor(int64_t prompt_tokens, int64_t resumed_tokens) const;
  const std::vector<IndexerType>& PatternTypesFor(int64_t prompt_tokens, int64_t resumed_tokens) const {
    return patterns_.patterns()[PatternFor(prompt_tokens, resumed_tokens)].types;
  }
  const BpeTokenizer* tokenizer() const { return tokenizer_.get(); }
  const PagedKvCache& cache() const { return *cache_; }
  DsaModel& model() { return *model_; }

  // Validates and queues a request: non-empty prompt of in-vocabulary ids, valid sampling params,
  // prompt + max_new_tokens within the model's positions and the whole cache.
  absl::StatusOr<RequestId> Submit(std::vector<int32_t> prompt, const SamplingParams& params);
  // Ends a request now; its next Step reports kAbort and its cache blocks are freed. Unknown ids: no-op.
  void Abort(RequestId id);
  // True while some request can make progress in Step (held and importing requests wait outside, and
  // so does a request whose segment sink is not Ready).
  bool HasWork() const;
  size_t num_requests() const { return requests_.size(); }
  // Runs one scheduling step. Requests that fail end with a kError event; the engine keeps serving.
  absl::StatusOr<std::vector<TokenEvent>> Step();

  // Runs `ids` as one prompt through chunked prefill, handing every chunk's result (logits of all its
  // positions; per-layer top-k when captured) to `on_chunk` together with the chunk's first position;
  // in the pattern a prompt of its length runs.
  absl::Status ScoreChunks(const std::vector<int32_t>& ids, bool capture_topk,
                           const std::function<absl::Status(int32_t, const ForwardResult&)>& on_chunk);

  // The model's counters since the previous call, with the requests each pattern took.
  IndexCacheStats TakeStats();
  // The prefix cache's counters since the previous call.
  PrefixCacheStats TakePrefixCacheStats() { return cache_->TakePrefixCacheStats(); }
  // The prefix cache's findable keys, for whoever publishes them (published_load.h): the whole set
  // now, then the changes since the previous call. Off (no keys, no changes) without the cache.
  bool prefix_cache_enabled() const { return prefix_cache_; }
  // The chain start of each pattern's blocks (PrefixCache::Seed of the model and that pattern), in
  // patterns().patterns() order: requests of different patterns share no block.
  const std::vector<BlockKey>& prefix_seeds() const { return prefix_seeds_; }
  std::vector<BlockKey> TrackPrefixCacheChanges() { return cache_->TrackPrefixCacheChanges(); }
  std::vector<PrefixCacheChange> TakePrefixCacheChanges() { return cache_->TakePrefixCacheChanges(); }
  const std::string& model_fingerprint() const { return fingerprint_; }
  // The GPU the engine runs on (a CUDA ordinal); -1 on the CPU.
  int cuda_device() const { return backend_->cuda_device(); }

  // --- disaggregated serving: the prefill side ----------------------------------------------
  // Like Submit, but the request ends at its first sampled token (event kPrefillDone) and keeps its
  // cache until Release. With `export_to`, every prompt position reaches it in one segment exactly
  // once, in order (a preempted request's recomputed positions are not sent again): positions found
  // in the prefix cache are sent from there, a chunk per step, before the computed ones. Positions
  // before `export_from` are not sent (the receiver holds them; INVALID_ARGUMENT unless it is before
  // the prompt's last position, whose row is always sent).
  absl::StatusOr<RequestId> SubmitPrefill(std::vector<int32_t> prompt, const SamplingParams& params,
                                          std::shared_ptr<SegmentSink> export_to = nullptr,
                                          int32_t export_from = 0);
  // Prompt positions already in the cache (grows chunk by chunk during prefill).
  absl::StatusOr<int32_t> CachedTokens(RequestId id) const;
  // Enqueues the export of computed positions [begin, end): every layer's latent rows and the Full
  // layers' index keys, in the cache's dtype (kv_segment.h). Returns at once; the copy runs beside
  // the next steps and KvSegment::Wait (any thread) waits for it. (SubmitPrefill's sink is the
  // streaming form.)
  absl::StatusOr<KvSegment> ExportSegment(RequestId id, int32_t begin, int32_t end);
  // The last prompt position's indexer inputs and selection per Full layer (after kPrefillDone).
  absl::StatusOr<std::vector<IndexerProbe>> TakeProbes(RequestId id);
  // Frees a held (prefill-done) request. Unknown ids: no-op.
  void Release(RequestId id);

  // --- disaggregated serving: the decode side -------------------------------------------------
  // Validates like Submit, starts the request (in the pattern PatternFor gives: the prefill worker's
  // rows are that pattern's) with the prompt's leading blocks found in the prefix
  // cache (CachedTokens says how many positions: the rows to receive start there) and reserves cache
  // for the rest; RESOURCE_EXHAUSTED when the cache is short now (retry later). The request waits for
  // its rows until StartDecode.
  absl::StatusOr<RequestId> AdmitImport(std::vector<int32_t> prompt, const SamplingParams& params);
  // `rows`: [count, width] of `kind` in the cache's dtype, as a prefill worker's export made them;
  // positions before CachedTokens at admission are refused (they are shared cached blocks).
  // Copied into the cache where they lie, in order with the steps around it (KvImporter::Import).
  absl::Status ImportRows(RequestId id, int32_t layer, KvRowKind kind, int32_t begin, int32_t count, LandedRows rows);
  // Memory of `bytes` for received rows to land in before ImportRows: host memory (page-locked on
  // CUDA, so the import's copy reads them in place) or device memory (rows received onto the GPU).
  absl::StatusOr<std::shared_ptr<LandingArea>> CreateReceiveArea(size_t bytes, RowsMemory memory = RowsMemory::kHost);
  // Re-runs each probe's indexer over the imported index keys (one wait on the device for all);
  // DATA_LOSS naming the first layer whose selection differs.
  absl::Status VerifyProbes(RequestId id, absl::Span<const IndexerProbe> probes);
  // Appends the prefill worker's first token and starts decoding; returns that token's event
  // (text, `first_logprobs`, and a finish if it already ends the request). A request that asked for
  // logprobs needs the prefill worker's `first_logprobs` (computed where the token was sampled).
  absl::StatusOr<TokenEvent> StartDecode(RequestId id, int32_t first_token,
                                         std::optional<TokenLogprobs> first_logprobs = std::nullopt);

 private:
  // Where a request is in its life (vLLM's RequestStatus in spirit). Only kRunning requests are
  // scheduled; every transition is one assignment in engine.cc.
  enum class State : uint8_t {
    kRunning,             // prefilling or decoding (a preempted request prefills again)
    kHeldForExport,       // prefill-only, first token sampled: the cache is kept until Release
    kWaitingForRemoteKv,  // decode side: blocks reserved, the rows arrive from a prefill worker
    kAborted,             // the next step reports kAbort and frees it
  };
  struct Request {
    RequestId id = 0;
    State state = State::kRunning;
    std::vector<int32_t> tokens;  // prompt + generated
    int32_t prompt_len = 0;
    int32_t pattern = 0;          // index into patterns_.patterns(): fixed for the request's life
    int32_t num_cached = 0;       // positions already in the cache
    bool prefill_only = false;    // ends at the first token and holds its cache
    bool greedy = false;          // temperature 0: the device's argmax is its token
    bool logprobs = false;        // each token's event carries its logprobs: its logits row is downloaded
    int32_t top_logprobs = 0;
    std::shared_ptr<SegmentSink> export_to;  // prefill-only: where its rows stream (may be null)
    int32_t exported = 0;         // positions [0, exported) handed to export_to
    std::vector<IndexerProbe> probes;
    bool prefix_cached = false;         // looks up and publishes its full blocks in the prefix cache
    bool looked_up = false;             // since it last held nothing (admission, preemption)
    std::vector<BlockKey> block_keys;   // keys of its first full blocks (PrefixCache::Chain)
    int32_t published_blocks = 0;       // its blocks [0, published_blocks) are findable
    // Positions past this are never published: an import publishes its prompt's blocks only, rows a
    // prefill computed, as the prefill workers' caches hold (a decode step's rows differ by rounding).
    int32_t publish_limit = std::numeric_limits<int32_t>::max();
    int32_t import_from = 0;            // an import: positions before it came from the prefix cache
    std::optional<Sampler> sampler;
    std::optional<StopChecker> stop;
    std::optional<IncrementalDecoder> detok;
  };

  Engine() = default;
  // `prefill_only`: the request caches its prompt alone (the decode worker holds the generated tokens),
  // so only the prompt has to fit this engine's cache.
  // A running request whose next chunk waits for its segment sink.
  static bool ExportBlocked(const Request& r) { return r.export_to != nullptr && !r.export_to->Ready(); }
  // One token to compute after its prompt: a decode step. A prefill-only request never decodes; its
  // last prompt token is a prompt chunk, which waits for its sink and follows its cached rows.
  static bool Decoding(const Request& r) {
    return !r.prefill_only && r.num_cached > 0 && r.tokens.size() - r.num_cached == 1;
  }
  absl::Status ValidateRequest(const std::vector<int32_t>& prompt, const SamplingParams& params,
                               bool prefill_only) const;
  absl::StatusOr<Request> MakeRequest(std::vector<int32_t> prompt, const SamplingParams& params, bool prefill_only);
  // Queues a made request and counts it under its pattern.
  RequestId Admit(Request r);
  absl::StatusOr<Request*> Find(RequestId id);
  // Records a sampled or imported token: detokenizes, checks stop conditions.
  TokenEvent Accept(Request& r, int32_t token);
  // Picks this step's tokens; preempts when a decoding request cannot grow.
  ForwardBatch Schedule(std::vector<Request*>& in_batch);
  // Starts, and hands to their sinks, the segments of the positions `batch` computes for requests
  // that stream their rows; the pass then exports them layer by layer.
  std::vector<KvSegment> BeginExports(const std::vector<Request*>& in_batch, const ForwardBatch& batch);
  // Hands a streaming request's sink its next cached positions, at most a chunk, copied from the
  // cache as they lie.
  void SendCachedRows(Request& r);
  void Preempt(Request& r);
  // Starts a request that holds nothing with the cached blocks of its longest cached prefix, leaving
  // at least its last token to compute (its logits give the next token).
  void AttachCachedPrefix(Request& r);
  // Makes the request's newly completed full blocks findable.
  void PublishFullBlocks(Request& r);
  // Logs which Shared layers telemetry measures and which it cannot, and arms the step sampler.
  void StartReuseTelemetry(double rate);
  // Takes the request's next token: `token` is its sampled token, or why none could be drawn;
  // `logits` its row when the request reports logprobs (else empty).
  // Layer `layer`'s index keys of `r`'s prompt, as floats [prompt_len, index_head_dim].
  absl::StatusOr<std::vector<float>> IndexKeysOf(const Request& r, int32_t layer);
  TokenEvent Advance(Request& r, const absl::StatusOr<int32_t>& token, absl::Span<const float> logits);
  void Finish(RequestId id);

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<DsaModel> model_;
  std::unique_ptr<PagedKvCache> cache_;
  std::unique_ptr<KvExporter> exporter_;
  std::unique_ptr<KvImporter> importer_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::string fingerprint_;
  bool prefix_cache_ = false;
  PatternSchedule patterns_{std::vector<IndexerType>()};
  std::vector<BlockKey> prefix_seeds_;                // per pattern
  std::vector<std::vector<bool>> index_key_layers_;   // per pattern: its Full layers (what its exports carry)
  std::vector<uint64_t> pattern_requests_;            // per pattern: requests admitted since TakeStats
  int32_t max_batch_tokens_ = 0;
  bool reuse_telemetry_ = false;   // a rate above 0 and some Shared layer with indexer weights
  StepSampler telemetry_steps_;
  RequestId next_id_ = 1;
  std::deque<RequestId> order_;  // admission order
  absl::flat_hash_map<RequestId, Request> requests_;
};

}  // namespace indexcache
