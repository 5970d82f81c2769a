// The glm_moe_dsa forward pass (transformers 5.17's GlmMoeDsaForCausalLM) over a batch of tokens from
// any mix of sequences — a prefill chunk, decode tokens, or both. Every token's latent KV and (Full
// layers) index key are written to the paged cache first; each token then attends over its own
// sequence's cache positions 0..pos, restricted to the top-k its layer's indexer picked (Full) or the
// previous Full layer picked (Shared). So chunked prefill, decode and mixed batches are one code path.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/backend/backend.h"
#include "common/backend/workspace.h"
#include "common/model/activations.h"
#include "common/model/decode_graphs.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/indexcache_stats.h"
#include "common/model/indexer_probe.h"
#include "common/model/model_config.h"
#include "common/model/model_shard.h"
#include "common/model/model_weights.h"
#include "common/parallel/communicator.h"
#include "common/model/probe_capture.h"
#include "common/model/reuse_telemetry.h"
#include "common/sampling/sampling_draw.h"

namespace indexcache {

class MixedPatternPass;

// What enters layer l of a forward pass: the residual stream and the selection in force there (the
// top-k of the last Full layer before l, which a Shared l reuses). Enough to resume the pass at l.
struct LayerInput {
  std::vector<float> hidden;  // [n, hidden]
  std::vector<int32_t> topk;  // [n, topk_cols]; empty for layer 0 (no selection yet)
};

struct ForwardBatch {
  std::vector<int32_t> token_ids;   // [n]
  std::vector<int32_t> positions;   // [n] absolute position of each token in its sequence
  std::vector<int32_t> token_seq;   // [n] index into `sequences`; a sequence's tokens are contiguous
  std::vector<SequenceId> sequences;
  std::vector<int32_t> logit_rows;  // tokens whose next-token logits are wanted
  // Return each logit row's greedy token (ForwardResult::argmax), chosen on the device, instead of the
  // row: a greedy decode step then downloads n ids, not n × vocab logits.
  bool argmax_only = false;
  // Non-empty: per logit row, the draw its request's Sampler made (Sampler::NextDraw), and each row's
  // token is drawn on the device (Backend::SampleTokens → ForwardResult::sampled, beside argmax)
  // instead of its logits being downloaded: a sampled decode step downloads 2n ids, not n × vocab.
  std::vector<SamplingDraw> draws;
  // Indices into logit_rows whose whole logits row is downloaded as well (ForwardResult::
  // logprob_logits), for requests that report logprobs: only they pay the [vocab] copy.
  std::vector<int32_t> logprob_rows;
  bool capture_topk = false;        // also return every layer's selection (for `score`)
  // Reuse telemetry (reuse_telemetry.h): Shared layers that have indexer weights also run their own
  // indexer on the rows whose whole context is in this batch, and the overlaps are counted in the
  // stats (TakeStats). Changes no output; a batch without such rows runs nothing extra.
  bool reuse_telemetry = false;
  std::vector<int32_t> probe_rows;  // tokens whose indexer inputs and selections are returned (handoff)
  // Called on the host once per layer, right after the layer's cache writes are enqueued: the
  // handoff's export enqueues that layer's copy there, so rows leave while later layers compute.
  std::function<void(int32_t layer)> after_cache_write;

  // Per sequence, the pattern it runs with (an adaptive pattern's requests: pattern_schedule.h), in
  // `sequences` order; empty: every sequence runs indexer_types. Only layers loaded Full can run Full.
  // Sequences of different patterns share the pass (mixed_pattern_pass.h).
  std::vector<std::vector<IndexerType>> sequence_indexer_types;

  // For the layer search (common/search), which scores many patterns on the same tokens:
  // the pattern this batch runs with (empty: the model's); only layers loaded Full can run Full.
  std::vector<IndexerType> indexer_types;
  // > 0: start at this layer from `resume` (captured by an earlier pass over the same tokens whose
  // pattern agrees before first_layer); earlier layers are neither run nor read.
  int32_t first_layer = 0;
  const LayerInput* resume = nullptr;
  bool capture_layer_inputs = false;  // return what entered every layer that ran
};


struct ForwardResult {
  std::vector<float> logits;  // [logit_rows.size(), vocab]; empty when argmax_only
  // When argmax_only or draws were given: per logit row, the lowest id of its largest logit (NaN counting as -inf), -1
  // when no logit is above -inf (Backend::ArgMax).
  std::vector<int32_t> argmax;
  // When draws were given: per logit row, Backend::SampleTokens' token (-1: no usable logit).
  std::vector<int32_t> sampled;
  // [logprob_rows.size(), vocab]: the logits of the rows ForwardBatch::logprob_rows named, in its order.
  std::vector<float> logprob_logits;
  // When captured: per layer, [n, topk_cols] key positions (-1 padded).
  std::vector<std::vector<int32_t>> topk;
  int32_t topk_cols = 0;
  // Per probe row, one entry per Full layer in layer order.
  std::vector<std::vector<IndexerProbe>> probes;
  // When captured: per layer (empty for layers before first_layer).
  std::vector<LayerInput> layer_inputs;
};

class DsaModel {
 public:
  // `config.indexer_types` is the pattern the model runs with (already overridden by the caller); with
  // an adaptive pattern, every layer some pattern runs Full (PatternSchedule::Loaded), each batch
  // naming its sequences' own (ForwardBatch::sequence_indexer_types).
  // A sharded rank (options.shard, model_shard.h) loads its share and all-reduces its sublayers'
  // partial sums with `group` (this rank's communicator of the shard's group); its results are the
  // whole model's, on every rank of the group alike.
  static absl::StatusOr<std::unique_ptr<DsaModel>> Load(const std::string& model_dir, ModelConfig config,
                                                        Backend* backend, const ModelLoadOptions& options = {},
                                                        Communicator* group = nullptr);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return *weights_; }
  Backend* backend() const { return backend_; }
  KvCacheSpec CacheSpec(int32_t block_size) const;
  // The Shared layers of `types` from `first_layer` on that have indexer weights: what a pass with
  // reuse telemetry measures (the model's pattern when `types` is empty).
  std::vector<int32_t> TelemetryLayers(const std::vector<IndexerType>& types = {}, int32_t first_layer = 0) const;

  // Runs the batch. The caller has reserved cache room for every position in it.
  absl::StatusOr<ForwardResult> Forward(const ForwardBatch& batch, PagedKvCache& cache);

  // Re-runs the indexer of each probe's Full layer for one query at `position` of `seq` over the index
  // keys in the cache (the handoff integrity check), all probes before one download. Returns each
  // probe's selected positions, best first.
  absl::StatusOr<std::vector<std::vector<int32_t>>> SelectKeys(const PagedKvCache& cache, SequenceId seq,
                                                               int32_t position,
                                                               absl::Span<const IndexerProbe> probes);

  // Counters since the last call. Timed regions of decode steps replayed as graphs are not measured.
  IndexCacheStats TakeStats();

  // Decode steps (one token per sequence, logits for each, nothing captured) run as a recorded graph
  // per batch-size and context bucket on a backend that can capture (CUDA); on by default there.
  // Turning them off (or on again) drops every recording.
  void set_decode_graphs(bool on);
  const DecodeGraphs* decode_graphs() const { return graphs_.get(); }

 private:
  DsaModel(ModelConfig config, Backend* backend)
      : config_(std::move(config)), forward_config_(config_), backend_(backend), workspace_(backend), probes_(*backend) {}
  absl::Status Validate(const ForwardBatch& batch, const PagedKvCache& cache) const;
  // Forward after validation, untimed: any batch, op by op.
  absl::StatusOr<ForwardResult> RunForward(const ForwardBatch& batch, PagedKvCache& cache);
  // The one pattern every sequence of `batch` runs, or null when its sequences' patterns differ.
  const std::vector<IndexerType>* UniformPattern(const ForwardBatch& batch) const;
  // Whether `batch` is a decode step that RunDecodeGraph can run.
  bool DecodeGraphFits(const ForwardBatch& batch) const;
  // A decode step padded to its bucket and replayed from the bucket's graph of `types`.
  absl::StatusOr<ForwardResult> RunDecodeGraph(const ForwardBatch& batch, const std::vector<IndexerType>& types,
                                               PagedKvCache& cache);

  // The pass in pieces, enqueued without host round trips. Layer l: norms, projections and cache
  // writes, then (Full layers) the indexer's selection into a.topk.
  // With `mixed`, a layer only some rows run Full selects for those rows alone (mixed_pattern_pass.h).
  void EnqueueProjections(int32_t l, bool full, const BatchLayout& layout, Activations& a, PagedKvCache& cache,
                          const MixedPatternPass* mixed);
  // The indexer's roped queries and normed, roped keys of layer l from its projections (in a.index_q,
  // a.index_k), as every indexer run starts.
  void EnqueueIndexerQueryKey(int32_t l, Activations& a);
  // A Shared layer with indexer weights (telemetry): its indexer's projections and query/key rows,
  // leaving a.topk, the selection it reuses, untouched.
  void EnqueueSharedIndexerInputs(int32_t l, Activations& a);
  // Layer l: sparse attention over a.topk, output projection, feed-forward, residual adds.
  void EnqueueAttentionAndFeedForward(int32_t l, const BatchLayout& layout, Activations& a, PagedKvCache& cache);
  // x += the group's sum of `partial` (every rank's share of a sharded sublayer); a failed collective
  // is kept in parallel_status_, which fails the pass.
  void ReduceInto(Tensor partial, Tensor x);
  // The final norm and LM head over a.logit_rows, each row's argmax, and when `sample` each row's
  // token drawn with a.draws.
  void EnqueueLogits(Activations& a, bool sample);
  // Downloads the first `rows` logit rows' argmax (and sampled tokens) when the batch asked for them
  // (argmax_only, draws), else their logits; and the logprob_rows' logits.
  absl::Status DownloadLogits(const Activations& a, int64_t rows, const ForwardBatch& batch, ForwardResult& result);
  // Adds one pass's indexer runs, skips and FLOPs to stats_: rows at `positions` running `types`.
  void CountIndexerWork(const std::vector<IndexerType>& types, int32_t first_layer,
                        absl::Span<const int32_t> positions);
  // The same for a batch whose sequences run their own patterns (one call per sequence).
  void CountIndexerWork(const ForwardBatch& batch);

  ModelConfig config_;
  ModelConfig forward_config_;  // config_ with this rank's heads (num_heads / shard size when tensor parallel)
  Backend* backend_;
  ModelShard shard_;
  Communicator* group_ = nullptr;  // set when sharded
  absl::Status parallel_status_;
  std::unique_ptr<ModelWeights> weights_;
  Workspace workspace_;
  ProbeCapture probes_;
  IndexCacheStats stats_;
  std::unique_ptr<DecodeGraphs> graphs_;  // null: every pass runs op by op
};

}  // namespace indexcache
