#include "common/model/dsa_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/model/mixed_pattern_pass.h"
#include "common/safetensors/weight_store.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// transformers builds q_a_layernorm, kv_a_layernorm with the RMSNorm default eps, not rms_norm_eps.
constexpr float kLoraNormEps = 1e-6f;
// The indexer's k_norm is an nn.LayerNorm(eps=1e-6).
constexpr float kIndexKeyNormEps = 1e-6f;

// The indexer's score scale, 1/√index_head_dim.
float IndexScale(const ModelConfig& c) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.index_head_dim)));
}

// SwiGLU MLP added to the residual stream: residual += down(silu(gate(x)) · up(x)).
void AddMlp(Backend& be, const FeedForwardWeights& w, Tensor x, Activations& a, Tensor residual) {
  const int64_t inter = w.down.cols;
  Tensor gate_up = a.gate_up.Cols(0, 2 * inter);
  gate_up.stride = 2 * inter;
  Tensor act = a.act.Cols(0, inter);
  act.stride = inter;
  be.Linear(x, w.gate_up, gate_up);
  be.SiluMul(gate_up, act);
  be.LinearAdd(act, w.down, residual);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DsaModel>> DsaModel::Load(const std::string& model_dir, ModelConfig config,
                                                         Backend* backend, const ModelLoadOptions& options,
                                                         Communicator* group) {
  RETURN_IF_ERROR(ValidateIndexPattern(config.indexer_types, config.num_layers));
  const ModelShard& shard = options.shard;
  if (shard.sharded() && (group == nullptr || group->size() != shard.size || group->rank() != shard.rank)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "rank %d of a %d-rank shard needs its group's communicator of that rank and size", shard.rank, shard.size));
  }
  ASSIGN_OR_RETURN(WeightStore store, WeightStore::Open(model_dir));
  if (config.fp8_weight_block) store.SetFp8WeightBlock((*config.fp8_weight_block)[0], (*config.fp8_weight_block)[1]);
  std::unique_ptr<DsaModel> model(new DsaModel(std::move(config), backend));
  ASSIGN_OR_RETURN(model->weights_, LoadModelWeights(model->config_, store, backend, options));
  model->shard_ = shard;
  model->group_ = shard.sharded() ? group : nullptr;
  if (shard.tensor_parallel) model->forward_config_.num_heads = model->config_.num_heads / shard.size;
  model->set_decode_graphs(true);
  return model;
}

KvCacheSpec DsaModel::CacheSpec(int32_t block_size) const {
  KvCacheSpec spec;
  spec.num_layers = config_.num_layers;
  for (IndexerType t : config_.indexer_types) spec.layer_has_index_keys.push_back(t == IndexerType::kFull);
  spec.latent_dim = config_.latent_cache_dim();
  spec.index_key_dim = config_.index_head_dim;
  spec.block_size = block_size;
  spec.dtype = backend_->activation_dtype();
  return spec;
}

std::vector<int32_t> DsaModel::TelemetryLayers(const std::vector<IndexerType>& types, int32_t first_layer) const {
  const std::vector<IndexerType>& pattern = types.empty() ? config_.indexer_types : types;
  std::vector<int32_t> layers;
  for (int32_t l = first_layer; l < config_.num_layers; ++l) {
    if (pattern[l] == IndexerType::kShared && weights_->layers[l].has_indexer) layers.push_back(l);
  }
  return layers;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DsaModel::SelectKeys(const PagedKvCache& cache, SequenceId seq,
                                                                      int32_t position,
                                                                      absl::Span<const IndexerProbe> probes) {
  const ModelConfig& c = config_;
  const int64_t q_width = int64_t{c.index_n_heads} * c.index_head_dim;
  std::vector<float> queries, weights;
  for (const IndexerProbe& probe : probes) {
    if (probe.layer < 0 || probe.layer >= c.num_layers || c.indexer_types[probe.layer] != IndexerType::kFull) {
      return absl::InvalidArgumentError(absl::StrFormat("layer %d is not a Full layer", probe.layer));
    }
    if (static_cast<int64_t>(probe.query.size()) != q_width ||
        static_cast<int64_t>(probe.head_weights.size()) != c.index_n_heads) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "indexer probe of layer %d has %d query and %d weight values, expected %d and %d", probe.layer,
          probe.query.size(), probe.head_weights.size(), q_width, c.index_n_heads));
    }
    queries.insert(queries.end(), probe.query.begin(), probe.query.end());
    weights.insert(weights.end(), probe.head_weights.begin(), probe.head_weights.end());
  }
  const std::vector<int32_t>& table = cache.BlockTable(seq);
  if (position < 0 || position >= static_cast<int64_t>(table.size()) * cache.block_size()) {
    return absl::OutOfRangeError(absl::StrFormat("position %d is outside sequence %d's cache", position, seq));
  }
  if (probes.empty()) return std::vector<std::vector<int32_t>>();
  const int64_t n = static_cast<int64_t>(probes.size());
  const int64_t k = std::min(c.index_topk, position + 1);
  const int32_t zero = 0;
  workspace_.BeginMeasure();
  auto carve = [&] {
    struct {
      Tensor q, w, seq, pos, tables, out;
    } t{workspace_.Take(DType::kF32, n, q_width), workspace_.Take(DType::kF32, n, c.index_n_heads),
        workspace_.Take(DType::kI32, 1, 1),        workspace_.Take(DType::kI32, 1, 1),
        workspace_.Take(DType::kI32, 1, static_cast<int64_t>(table.size())), workspace_.Take(DType::kI32, n, k)};
    return t;
  };
  carve();
  RETURN_IF_ERROR(workspace_.Commit());
  auto t = carve();
  Backend& be = *backend_;
  be.Upload(queries.data(), t.q);
  be.Upload(weights.data(), t.w);
  be.Upload(&zero, t.seq);
  be.Upload(&position, t.pos);
  be.Upload(table.data(), t.tables);
  BatchLayout layout{t.seq, t.pos, Tensor{}, t.tables, cache.block_size(), position + 1};
  const float scale = IndexScale(c);
  // Every probe's selection is enqueued before the one download: a single wait on the device.
  for (int64_t i = 0; i < n; ++i) {
    be.IndexerTopK(t.q.Rows(i, 1), t.w.Rows(i, 1), c.index_n_heads, cache.index_key_pool(probes[i].layer), layout,
                   scale, t.out.Rows(i, 1));
  }
  std::vector<int32_t> flat(static_cast<size_t>(n * k));
  RETURN_IF_ERROR(be.Download(t.out, flat.data()));
  std::vector<std::vector<int32_t>> selected(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) selected[i].assign(flat.begin() + i * k, flat.begin() + (i + 1) * k);
  return selected;
}

IndexCacheStats DsaModel::TakeStats() {
  stats_.indexer_seconds += backend_->TakeRegionSeconds(TimedRegion::kIndexer);
  IndexCacheStats out = stats_;
  stats_ = IndexCacheStats{};
  return out;
}

absl::Status DsaModel::Validate(const ForwardBatch& b, const PagedKvCache& cache) const {
  const size_t n = b.token_ids.size();
  if (n == 0) return absl::InvalidArgumentError("empty forward batch");
  if (b.positions.size() != n || b.token_seq.size() != n) {
    return absl::InvalidArgumentError("forward batch: ids, positions and sequence indices differ in length");
  }
  for (size_t i = 0; i < n; ++i) {
    if (b.token_ids[i] < 0 || b.token_ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d is outside the vocabulary [0, %d)", b.token_ids[i], config_.vocab_size));
    }
    if (b.token_seq[i] < 0 || b.token_seq[i] >= static_cast<int32_t>(b.sequences.size())) {
      return absl::InvalidArgumentError("forward batch: sequence index out of range");
    }
    if (i > 0 && b.token_seq[i] != b.token_seq[i - 1] &&
        std::find(b.token_seq.begin(), b.token_seq.begin() + i, b.token_seq[i]) != b.token_seq.begin() + i) {
      return absl::InvalidArgumentError("forward batch: a sequence's tokens must be contiguous");
    }
    const SequenceId seq = b.sequences[b.token_seq[i]];
    const int32_t capacity = static_cast<int32_t>(cache.BlockTable(seq).size()) * cache.block_size();
    if (b.positions[i] < 0 || b.positions[i] >= capacity) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "position %d of sequence %d is outside its reserved cache (%d tokens)", b.positions[i], seq, capacity));
    }
  }
  for (int32_t row : b.logit_rows) {
    if (row < 0 || row >= static_cast<int32_t>(n)) return absl::InvalidArgumentError("logit row out of range");
  }
  for (int32_t k : b.logprob_rows) {
    if (k < 0 || k >= static_cast<int32_t>(b.logit_rows.size())) {
      return absl::InvalidArgumentError("forward batch: a logprob row names no logit row");
    }
  }
  if (!b.draws.empty() && b.draws.size() != b.logit_rows.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("forward batch: %d sampling draws for %d logit rows",
                                                      b.draws.size(), b.logit_rows.size()));
  }
  auto check_pattern = [&](const std::vector<IndexerType>& types) -> absl::Status {
    RETURN_IF_ERROR(ValidateIndexPattern(types, config_.num_layers));
    for (int32_t l = 0; l < config_.num_layers; ++l) {
      if (types[l] != IndexerType::kFull) continue;
      if (config_.indexer_types[l] != IndexerType::kFull || cache.index_key_pool(l).empty()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "forward batch: layer %d cannot run Full: it was loaded Shared (no indexer weights or index-key pool)",
            l));
      }
    }
    return absl::OkStatus();
  };
  if (!b.indexer_types.empty()) RETURN_IF_ERROR(check_pattern(b.indexer_types));
  if (!b.sequence_indexer_types.empty()) {
    if (!b.indexer_types.empty() || b.first_layer != 0) {
      return absl::InvalidArgumentError(
          "forward batch: per-sequence patterns exclude a batch pattern and a later first layer (the layer search's)");
    }
    if (b.sequence_indexer_types.size() != b.sequences.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("forward batch: %d sequence patterns for %d sequences",
                                                        b.sequence_indexer_types.size(), b.sequences.size()));
    }
    for (const std::vector<IndexerType>& types : b.sequence_indexer_types) RETURN_IF_ERROR(check_pattern(types));
  }
  if (b.first_layer < 0 || b.first_layer >= config_.num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat("forward batch: first layer %d is outside [0, %d)",
                                                      b.first_layer, config_.num_layers));
  }
  if (b.first_layer > 0) {
    if (b.resume == nullptr) return absl::InvalidArgumentError("forward batch: a later first layer needs its input");
    const int32_t max_context = *std::max_element(b.positions.begin(), b.positions.end()) + 1;
    const size_t topk_cols = std::min(config_.index_topk, max_context);
    const auto& types = b.indexer_types.empty() ? config_.indexer_types : b.indexer_types;
    // A Shared first layer reuses the selection in force; a Full one makes its own (any given is uploaded).
    const bool needs_topk = types[b.first_layer] == IndexerType::kShared || !b.resume->topk.empty();
    if (b.resume->hidden.size() != n * config_.hidden_size || (needs_topk && b.resume->topk.size() != n * topk_cols)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "forward batch: layer %d's input has %d hidden and %d top-k values, expected %d and %d", b.first_layer,
          b.resume->hidden.size(), b.resume->topk.size(), n * config_.hidden_size, needs_topk ? n * topk_cols : 0));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> DsaModel::Forward(const ForwardBatch& batch, PagedKvCache& cache) {
  RETURN_IF_ERROR(Validate(batch, cache));
  // The whole pass up to the logits' download (where any backend has finished): the denominator of
  // the IndexCache speedup estimate.
  const auto started = std::chrono::steady_clock::now();
  absl::StatusOr<ForwardResult> result =
      DecodeGraphFits(batch) ? RunDecodeGraph(batch, *UniformPattern(batch), cache) : RunForward(batch, cache);
  stats_.forward_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

namespace {

// Cache slots and block tables of a batch, on the host.
struct HostLayout {
  int64_t max_blocks = 1;
  std::vector<int32_t> tables;  // [num_seqs, max_blocks], zero past each sequence's blocks
  std::vector<int32_t> slots;   // [n]
  int32_t max_context = 0;      // max over tokens of position + 1
};

HostLayout LayoutOnHost(const ForwardBatch& b, const PagedKvCache& cache) {
  HostLayout h;
  for (SequenceId s : b.sequences) h.max_blocks = std::max<int64_t>(h.max_blocks, cache.BlockTable(s).size());
  const int64_t num_seqs = static_cast<int64_t>(b.sequences.size());
  h.tables.assign(num_seqs * h.max_blocks, 0);
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto& table = cache.BlockTable(b.sequences[s]);
    std::copy(table.begin(), table.end(), h.tables.begin() + s * h.max_blocks);
  }
  h.slots.resize(b.token_ids.size());
  for (size_t i = 0; i < b.token_ids.size(); ++i) {
    const int32_t pos = b.positions[i];
    h.slots[i] = h.tables[b.token_seq[i] * h.max_blocks + pos / cache.block_size()] * cache.block_size() +
                 pos % cache.block_size();
    h.max_context = std::max(h.max_context, pos + 1);
  }
  return h;
}

}  // namespace

void DsaModel::CountIndexerWork(const ForwardBatch& b) {
  if (const std::vector<IndexerType>* types = UniformPattern(b)) {
    CountIndexerWork(*types, b.first_layer, b.positions);
    return;
  }
  // A sequence's tokens are contiguous (Validate).
  for (size_t begin = 0; begin < b.positions.size();) {
    size_t end = begin;
    while (end < b.positions.size() && b.token_seq[end] == b.token_seq[begin]) ++end;
    CountIndexerWork(b.sequence_indexer_types[b.token_seq[begin]], b.first_layer,
                     absl::MakeConstSpan(b.positions).subspan(begin, end - begin));
    begin = end;
  }
}

void DsaModel::CountIndexerWork(const std::vector<IndexerType>& types, int32_t first_layer,
                                absl::Span<const int32_t> positions) {
  const ModelConfig& c = config_;
  const int64_t n = static_cast<int64_t>(positions.size());
  uint64_t visible_keys = 0;  // Σ (pos + 1): keys each indexer run scores
  for (int32_t pos : positions) visible_keys += pos + 1;
  const double ih = c.index_n_heads, id = c.index_head_dim;
  for (int32_t l = first_layer; l < c.num_layers; ++l) {
    if (types[l] == IndexerType::kFull) {
      stats_.indexer_runs += n;
      stats_.indexer_flops += 2.0 * n * (c.q_lora_rank * ih * id + c.hidden_size * (id + ih)) +
                              visible_keys * (2.0 * ih * id + 3.0 * ih);
    } else {
      stats_.indexer_skips += n;
      stats_.index_key_bytes_not_stored += n * c.index_head_dim * DTypeSize(backend_->activation_dtype());
    }
  }
}

void DsaModel::EnqueueProjections(int32_t l, bool full, const BatchLayout& layout, Activations& a,
                                  PagedKvCache& cache, const MixedPatternPass* mixed) {
  const ModelConfig& c = forward_config_;  // this rank's heads
  Backend& be = *backend_;
  const LayerWeights& w = weights_->layers[l];
  const int64_t heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const float theta = static_cast<float>(c.rope_theta);
  // --- MLA projections (with a Full layer's indexer projections stacked behind them: model_weights.h);
  // the latent row [normed kv latent | roped shared key] goes to the cache.
  // A layer run Shared takes only the MLA rows of its stacks, even when it was loaded Full.
  const int64_t hidden_rows = full ? w.hidden_proj.rows : c.q_lora_rank + c.latent_cache_dim();
  const int64_t q_rows = full ? w.q_latent_proj.rows : heads * c.qk_head_dim();
  be.RmsNorm(a.x, w.input_norm, c.rms_norm_eps, a.h);
  be.Linear(a.h, w.hidden_proj.Rows(0, hidden_rows), a.hidden_proj.Cols(0, hidden_rows));
  be.RmsNorm(a.qa, w.q_a_norm, kLoraNormEps, a.qa);
  be.Linear(a.qa, w.q_latent_proj.Rows(0, q_rows), a.q_latent_proj.Cols(0, q_rows));
  Tensor q_rope = a.q.Cols(heads * nope, heads * rope);
  be.RopeInterleaved(q_rope, c.num_heads, c.qk_rope_head_dim, 0, c.qk_rope_head_dim, theta, a.pos);
  Tensor kv_latent = a.latent.Cols(0, c.kv_lora_rank);
  be.RmsNorm(kv_latent, w.kv_a_norm, kLoraNormEps, kv_latent);
  be.RopeInterleaved(a.latent, 1, c.latent_cache_dim(), c.kv_lora_rank, c.qk_rope_head_dim, theta, a.pos);
  be.WriteCacheRows(a.latent, a.slots, cache.latent_pool(l));
  if (!full) return;  // Shared layers keep the previous Full layer's a.topk.

  // --- DSA indexer (its projections ran in the stacked products above, outside the timed region)
  be.BeginRegion(TimedRegion::kIndexer);
  EnqueueIndexerQueryKey(l, a);
  const bool partial = mixed != nullptr && mixed->partial(l);
  be.WriteCacheRows(a.index_k, partial ? mixed->KeySlots(l) : a.slots, cache.index_key_pool(l));
  if (partial) {
    mixed->EnqueueTopK(be, l, a, layout, cache.index_key_pool(l), c.index_n_heads, IndexScale(c));
  } else {
    be.IndexerTopK(a.index_q, a.index_w, c.index_n_heads, cache.index_key_pool(l), layout, IndexScale(c), a.topk);
  }
  be.EndRegion(TimedRegion::kIndexer);
}

void DsaModel::EnqueueIndexerQueryKey(int32_t l, Activations& a) {
  const ModelConfig& c = config_;
  Backend& be = *backend_;
  const LayerWeights& w = weights_->layers[l];
  const float theta = static_cast<float>(c.rope_theta);
  be.RopeInterleaved(a.index_q, c.index_n_heads, c.index_head_dim, 0, c.qk_rope_head_dim, theta, a.pos);
  be.LayerNorm(a.index_k, w.index_k_norm_w, w.index_k_norm_b, kIndexKeyNormEps, a.index_k);
  be.RopeInterleaved(a.index_k, 1, c.index_head_dim, 0, c.qk_rope_head_dim, theta, a.pos);
}

void DsaModel::EnqueueSharedIndexerInputs(int32_t l, Activations& a) {
  const ModelConfig& c = forward_config_;  // this rank's heads
  Backend& be = *backend_;
  const LayerWeights& w = weights_->layers[l];
  // The indexer's rows of the stacks as products of their own (EnqueueProjections ran the MLA rows):
  // the MLA columns stay exactly those of an unsampled pass, which one wider product could sum in
  // another order. a.h and a.qa still hold this layer's normed inputs.
  const int64_t mla_hidden = c.q_lora_rank + c.latent_cache_dim(), mla_q = int64_t{c.num_heads} * c.qk_head_dim();
  const int64_t index_hidden = w.hidden_proj.rows - mla_hidden, index_q = w.q_latent_proj.rows - mla_q;
  be.Linear(a.h, w.hidden_proj.Rows(mla_hidden, index_hidden), a.hidden_proj.Cols(mla_hidden, index_hidden));
  be.Linear(a.qa, w.q_latent_proj.Rows(mla_q, index_q), a.index_q);
  EnqueueIndexerQueryKey(l, a);
}

void DsaModel::EnqueueAttentionAndFeedForward(int32_t l, const BatchLayout& layout, Activations& a,
                                              PagedKvCache& cache) {
  const ModelConfig& c = forward_config_;  // this rank's heads
  Backend& be = *backend_;
  const LayerWeights& w = weights_->layers[l];
  const int64_t heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  Tensor q_nope = a.q.Cols(0, heads * nope);
  Tensor q_rope = a.q.Cols(heads * nope, heads * rope);
  // --- sparse MLA in latent form: q_nope → latent space, attend over the selected keys, → values.
  be.BeginRegion(TimedRegion::kAttention);
  be.HeadwiseLinear(q_nope, w.w_uk_t, c.num_heads, a.q_latent);
  be.SparseMlaAttention(a.q_latent, q_rope, c.num_heads, cache.latent_pool(l), layout, a.topk, c.attention_scale,
                        a.o_latent);
  be.HeadwiseLinear(a.o_latent, w.w_uv, c.num_heads, a.o_heads);
  be.EndRegion(TimedRegion::kAttention);
  // Each sublayer's output goes straight into the residual stream: x += o_proj(...), x += MLP(...),
  // x += experts(...) — no intermediate, no separate add. A sharded sublayer's output is this rank's
  // partial sum: it goes to a.partial, which the group all-reduces before it joins x.
  const bool tp = shard_.tensor_parallel && group_ != nullptr, ep = shard_.expert_parallel && group_ != nullptr;
  if (tp) {
    be.Linear(a.o_heads, w.o_proj, a.partial);
    ReduceInto(a.partial, a.x);
  } else {
    be.LinearAdd(a.o_heads, w.o_proj, a.x);
  }

  // --- feed-forward
  be.RmsNorm(a.x, w.post_attn_norm, c.rms_norm_eps, a.h);
  if (!w.is_moe) {
    if (tp) be.Fill(a.partial, 0.0f);
    AddMlp(be, w.dense, a.h, a, tp ? a.partial : a.x);
    if (tp) ReduceInto(a.partial, a.x);
    return;
  }
  // Routed experts add into the partial sum when they are split across ranks, the shared experts
  // when their columns are; whatever is whole on every rank goes straight into x.
  const bool shared_split = tp && !w.shared.gate_up.empty();
  if (ep || shared_split) be.Fill(a.partial, 0.0f);
  be.BeginRegion(TimedRegion::kMoe);
  MoeRouting routing{c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, c.norm_topk_prob,
                     c.routed_scaling_factor};
  be.MoeRoute(a.h, w.router, w.router_bias, routing, a.route_ids, a.route_weights);
  be.MoeExperts(a.h, w.experts_gate_up, w.experts_down, w.num_experts, a.route_ids, a.route_weights,
                ep ? a.partial : a.x, w.first_expert);
  be.EndRegion(TimedRegion::kMoe);
  if (!w.shared.gate_up.empty()) AddMlp(be, w.shared, a.h, a, shared_split ? a.partial : a.x);
  if (ep || shared_split) ReduceInto(a.partial, a.x);
}

void DsaModel::ReduceInto(Tensor partial, Tensor x) {
  absl::Status reduced = group_->AllReduceSum(*backend_, partial);
  if (!reduced.ok() && parallel_status_.ok()) parallel_status_ = Annotate(reduced, "all-reduce of a sharded sublayer");
  backend_->Add(x, partial);
}

void DsaModel::EnqueueLogits(Activations& a, bool sample) {
  Backend& be = *backend_;
  be.GatherRows(a.x, a.logit_rows, a.final_x);
  be.RmsNorm(a.final_x, weights_->final_norm, config_.rms_norm_eps, a.final_x);
  be.Linear(a.final_x, weights_->lm_head, a.logits);
  be.ArgMax(a.logits, a.argmax);  // one small kernel: cheaper than a second recording per bucket
  if (sample) be.SampleTokens(a.logits, a.draws, a.sampled);
}

absl::Status DsaModel::DownloadLogits(const Activations& a, int64_t rows, const ForwardBatch& b, ForwardResult& result) {
  const int64_t vocab = config_.vocab_size;
  if (b.argmax_only || !b.draws.empty()) {
    result.argmax.resize(rows);
    RETURN_IF_ERROR(backend_->Download(a.argmax.Rows(0, rows), result.argmax.data()));
    if (!b.draws.empty()) {
      result.sampled.resize(rows);
      RETURN_IF_ERROR(backend_->Download(a.sampled.Rows(0, rows), result.sampled.data()));
    }
  } else {
    result.logits.resize(rows * vocab);
    RETURN_IF_ERROR(backend_->Download(a.logits.Rows(0, rows), result.logits.data()));
  }
  // Logprobs are computed on the host from these rows (common/sampling/logprobs.h): one [vocab] copy
  // per asking request after the step, no kernel of its own, the same on every backend. On a decode
  // step replayed as a graph, a.logits is the graph's own buffer, read here after the replay.
  result.logprob_logits.resize(b.logprob_rows.size() * vocab);
  for (size_t k = 0; k < b.logprob_rows.size(); ++k) {
    RETURN_IF_ERROR(backend_->Download(a.logits.Rows(b.logprob_rows[k], 1), result.logprob_logits.data() + k * vocab));
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> DsaModel::RunForward(const ForwardBatch& b, PagedKvCache& cache) {
  const ModelConfig& c = forward_config_;  // this rank's heads
  Backend& be = *backend_;
  parallel_status_ = absl::OkStatus();  // a pass that failed earlier says nothing about this one
  const int64_t n = static_cast<int64_t>(b.token_ids.size());
  const int64_t num_seqs = static_cast<int64_t>(b.sequences.size());
  const HostLayout host = LayoutOnHost(b, cache);
  const int32_t max_context = host.max_context;
  const int64_t topk_cols = std::min(c.index_topk, max_context);
  const int64_t logit_rows = static_cast<int64_t>(b.logit_rows.size());
  const std::vector<IndexerType>* uniform = UniformPattern(b);
  std::optional<MixedPatternPass> mixed;
  if (uniform == nullptr) {
    mixed = MixedPatternPass::Plan(b.sequence_indexer_types, b.token_seq, b.positions, host.slots, c.num_layers);
  }
  const std::vector<IndexerType>& types = uniform != nullptr ? *uniform : mixed->types();
  // Telemetry measures batches of one pattern: a Shared layer's reused selection depends on it.
  const std::vector<int32_t> telemetry_layers =
      b.reuse_telemetry && uniform != nullptr ? TelemetryLayers(types, b.first_layer) : std::vector<int32_t>();
  // Unsampled passes (and passes without a layer to measure) plan nothing: no host work either.
  ReuseTelemetryPass telemetry =
      telemetry_layers.empty() ? ReuseTelemetryPass()
                               : ReuseTelemetryPass::Plan(b.positions, b.token_seq, cache.block_size(), c.index_topk,
                                                          static_cast<int32_t>(telemetry_layers.size()));

  workspace_.BeginMeasure();
  Carve(c, be.activation_dtype(), n, num_seqs, host.max_blocks, topk_cols, logit_rows, workspace_, shard_.sharded());
  if (!telemetry.empty()) telemetry.Carve(c, be.activation_dtype(), topk_cols, workspace_);
  if (mixed) mixed->Carve(c, be.activation_dtype(), topk_cols, workspace_);
  RETURN_IF_ERROR(workspace_.Commit());
  Activations a =
      Carve(c, be.activation_dtype(), n, num_seqs, host.max_blocks, topk_cols, logit_rows, workspace_, shard_.sharded());
  if (!telemetry.empty()) {
    telemetry.Carve(c, be.activation_dtype(), topk_cols, workspace_);
    telemetry.Upload(be);
  }
  if (mixed) {
    mixed->Carve(c, be.activation_dtype(), topk_cols, workspace_);
    mixed->Upload(be);
  }

  be.Upload(b.token_ids.data(), a.ids);
  be.Upload(b.positions.data(), a.pos);
  be.Upload(b.token_seq.data(), a.seq);
  be.Upload(host.slots.data(), a.slots);
  be.Upload(host.tables.data(), a.tables);
  if (logit_rows > 0) be.Upload(b.logit_rows.data(), a.logit_rows);
  if (!b.draws.empty()) be.Upload(b.draws.data(), a.draws);
  BatchLayout layout{a.seq, a.pos, a.slots, a.tables, cache.block_size(), max_context};

  ForwardResult result;
  result.topk_cols = static_cast<int32_t>(topk_cols);
  if (!b.probe_rows.empty()) {
    const int64_t full_layers = std::count(types.begin() + b.first_layer, types.end(), IndexerType::kFull);
    RETURN_IF_ERROR(probes_.Begin(a, static_cast<int64_t>(b.probe_rows.size()), full_layers));
  }
  CountIndexerWork(b);
  if (b.first_layer == 0) {
    be.Embedding(weights_->embed_tokens, a.ids, a.x);
  } else {
    be.Upload(b.resume->hidden.data(), a.x);
    if (!b.resume->topk.empty()) be.Upload(b.resume->topk.data(), a.topk);
  }
  if (b.capture_layer_inputs) result.layer_inputs.resize(c.num_layers);
  size_t telemetry_slot = 0;
  for (int32_t l = b.first_layer; l < c.num_layers; ++l) {
    const bool full = types[l] == IndexerType::kFull;
    if (b.capture_layer_inputs) {
      LayerInput& in = result.layer_inputs[l];
      in.hidden.resize(n * c.hidden_size);
      RETURN_IF_ERROR(be.Download(a.x, in.hidden.data()));
      if (l > 0) {
        in.topk.resize(n * topk_cols);
        RETURN_IF_ERROR(be.Download(a.topk, in.topk.data()));
      }
    }
    EnqueueProjections(l, full, layout, a, cache, mixed ? &*mixed : nullptr);
    if (b.after_cache_write) b.after_cache_write(l);
    if (!telemetry.empty() && telemetry_slot < telemetry_layers.size() && telemetry_layers[telemetry_slot] == l) {
      EnqueueSharedIndexerInputs(l, a);
      telemetry.Enqueue(be, static_cast<int32_t>(telemetry_slot++), a, c.index_n_heads, IndexScale(c));
    }
    if (full) {
      for (size_t p = 0; p < b.probe_rows.size(); ++p) {
        // A probe row whose own pattern runs this layer Shared holds no selection of this layer's.
        if (mixed && !mixed->RowRunsFull(b.probe_rows[p], l)) continue;
        probes_.Capture(a, static_cast<int64_t>(p), b.probe_rows[p], l);
      }
    }
    if (b.capture_topk) {
      result.topk.emplace_back(n * topk_cols);
      RETURN_IF_ERROR(be.Download(a.topk, result.topk.back().data()));
    }
    EnqueueAttentionAndFeedForward(l, layout, a, cache);
  }

  if (logit_rows > 0) {
    EnqueueLogits(a, !b.draws.empty());
    RETURN_IF_ERROR(DownloadLogits(a, logit_rows, b, result));
  } else {
    RETURN_IF_ERROR(be.Synchronize());
  }
  if (!b.probe_rows.empty()) result.probes = probes_.Take();
  // A collective that failed left this rank's sums incomplete: the pass's result is not the model's.
  if (!parallel_status_.ok()) return std::exchange(parallel_status_, absl::OkStatus());
  if (!telemetry.empty()) {
    RETURN_IF_ERROR(telemetry.Collect(be, telemetry_layers, stats_.reuse_overlap));
    ++stats_.reuse_telemetry_passes;
  }
  return result;
}

absl::StatusOr<ForwardResult> DsaModel::RunDecodeGraph(const ForwardBatch& b, const std::vector<IndexerType>& types,
                                                       PagedKvCache& cache) {
  const ModelConfig& c = forward_config_;  // this rank's heads
  Backend& be = *backend_;
  const int64_t n = static_cast<int64_t>(b.token_ids.size());
  const HostLayout real = LayoutOnHost(b, cache);
  const bool sample = !b.draws.empty();
  DecodeGraphs::Shape shape{DecodeGraphs::RowsBucket(n), DecodeGraphs::ContextBucket(real.max_context), sample, types};
  const int64_t max_blocks = (shape.context + cache.block_size() - 1) / cache.block_size();
  const int64_t topk_cols = std::min(c.index_topk, shape.context);
  ASSIGN_OR_RETURN(Activations * a, graphs_->ActivationsFor(c, shape, max_blocks, topk_cols));

  // Padding rows: token 0 at position 0 of a sequence of their own (an all-zero block table row, so
  // they read block 0, whoever holds it) with no cache slot (they write nothing); their logits are
  // dropped. Every real row's result is computed exactly as without them (rows never interact).
  std::vector<int32_t> ids(shape.rows, 0), pos(shape.rows, 0), seq(shape.rows), slots(shape.rows, -1),
      logit_rows(shape.rows);
  std::vector<int32_t> tables(shape.rows * max_blocks, 0);
  for (int64_t i = 0; i < shape.rows; ++i) seq[i] = logit_rows[i] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = b.token_ids[i];
    pos[i] = b.positions[i];
    slots[i] = real.slots[i];
    // Blocks reserved past the bucket's context are never read.
    std::copy_n(real.tables.begin() + i * real.max_blocks, std::min(real.max_blocks, max_blocks),
                tables.begin() + i * max_blocks);
  }
  be.Upload(ids.data(), a->ids);
  be.Upload(pos.data(), a->pos);
  be.Upload(seq.data(), a->seq);
  be.Upload(slots.data(), a->slots);
  be.Upload(tables.data(), a->tables);
  be.Upload(logit_rows.data(), a->logit_rows);
  if (sample) {
    std::vector<SamplingDraw> draws(shape.rows);  // padding rows: greedy, the cheapest draw
    std::copy(b.draws.begin(), b.draws.end(), draws.begin());
    be.Upload(draws.data(), a->draws);
  }
  const BatchLayout layout{a->seq, a->pos, a->slots, a->tables, cache.block_size(), shape.context};
  CountIndexerWork(types, 0, b.positions);
  RETURN_IF_ERROR(graphs_->Run(shape, [&] {
    be.Embedding(weights_->embed_tokens, a->ids, a->x);
    for (int32_t l = 0; l < c.num_layers; ++l) {
      EnqueueProjections(l, types[l] == IndexerType::kFull, layout, *a, cache, nullptr);
      EnqueueAttentionAndFeedForward(l, layout, *a, cache);
    }
    EnqueueLogits(*a, sample);
  }));
  ForwardResult result;
  result.topk_cols = static_cast<int32_t>(std::min(c.index_topk, real.max_context));
  RETURN_IF_ERROR(DownloadLogits(*a, n, b, result));
  return result;
}

void DsaModel::set_decode_graphs(bool on) {
  graphs_.reset();
  if (on && backend_->SupportsCapture()) graphs_ = std::make_unique<DecodeGraphs>(backend_);
}

const std::vector<IndexerType>* DsaModel::UniformPattern(const ForwardBatch& b) const {
  if (b.sequence_indexer_types.empty()) return b.indexer_types.empty() ? &config_.indexer_types : &b.indexer_types;
  const std::vector<IndexerType>& first = b.sequence_indexer_types.front();
  for (const std::vector<IndexerType>& types : b.sequence_indexer_types) {
    if (types != first) return nullptr;
  }
  return &first;
}

bool DsaModel::DecodeGraphFits(const ForwardBatch& b) const {
  const size_t n = b.token_ids.size();
  // A step of one pattern replays that pattern's recording; a step mixing patterns runs op by op (its
  // partial layers' subsets are planned per step).
  // A sharded pass's collectives run on the host between ops: not recordable (NCCL's would be).
  if (graphs_ == nullptr || shard_.sharded() || b.first_layer != 0 || b.capture_topk || b.capture_layer_inputs ||
      !b.probe_rows.empty() ||
      b.after_cache_write || !b.indexer_types.empty() || UniformPattern(b) == nullptr ||
      DecodeGraphs::RowsBucket(static_cast<int64_t>(n)) == 0 ||
      b.sequences.size() != n || b.logit_rows.size() != n) {
    return false;
  }
  // One token per sequence, each wanting its logits: a decode step.
  for (size_t i = 0; i < n; ++i) {
    if (b.token_seq[i] != static_cast<int32_t>(i) || b.logit_rows[i] != static_cast<int32_t>(i)) return false;
  }
  return true;
}

}  // namespace indexcache
