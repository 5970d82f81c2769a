#include "common/engine/engine.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model/model_fingerprint.h"
#include "common/model/topk_near_tie.h"
#include "common/safetensors/dtype.h"
#include "common/safetensors/weight_store.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// The cache id ScoreChunks uses; requests use ids from 1 up.
constexpr SequenceId kScoringSequence = -1;

RequestFinish FromStop(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return RequestFinish::kStop;
    case FinishReason::kLength:
      return RequestFinish::kLength;
    case FinishReason::kNone:
      break;
  }
  return RequestFinish::kNone;
}

absl::StatusOr<std::vector<IndexerType>> ResolvePattern(const EngineOptions& o, const ModelConfig& c) {
  if (!o.index_pattern.empty() && o.index_freq > 0) {
    return absl::InvalidArgumentError("give either an index pattern or an index frequency, not both");
  }
  if (!o.index_pattern.empty()) return ParseIndexPattern(o.index_pattern, c.num_layers);
  if (o.index_freq > 0) return IndexPatternFromFreq(o.index_freq, c.index_skip_topk_offset, c.num_layers);
  if (o.index_freq < 0) return absl::InvalidArgumentError("index frequency must be >= 1");
  return c.indexer_types;
}

// A token chosen on the device (Backend::ArgMax for greedy rows, Backend::SampleTokens for sampled
// ones), refused as the sampler refuses a row without a usable logit.
absl::StatusOr<int32_t> DeviceToken(int32_t token, int32_t vocab_size) {
  if (token >= 0) return token;
  return absl::InvalidArgumentError(
      absl::StrFormat("logits row has no usable value: all %d entries are NaN or -inf", vocab_size));
}

}  // namespace

const char* RequestFinishName(RequestFinish finish) {
  switch (finish) {
    case RequestFinish::kNone:
      return "none";
    case RequestFinish::kStop:
      return "stop";
    case RequestFinish::kLength:
      return "length";
    case RequestFinish::kAbort:
      return "abort";
    case RequestFinish::kError:
      return "error";
    case RequestFinish::kPrefillDone:
      return "prefill_done";
  }
  return "?";
}

int32_t DefaultMaxBatchTokens(std::string_view device) { return device.starts_with("cuda") ? 8192 : 512; }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& o) {
  if (o.block_size < 1 || o.max_batch_tokens < 1) {
    return absl::InvalidArgumentError("block size and max batch tokens must be positive");
  }
  if (!(o.reuse_telemetry_rate >= 0.0 && o.reuse_telemetry_rate <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the reuse telemetry rate must lie in [0, 1], got %g", o.reuse_telemetry_rate));
  }
  std::unique_ptr<Engine> engine(new Engine());
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.model_dir));
  ASSIGN_OR_RETURN(std::vector<IndexerType> base, ResolvePattern(o, config));
  ASSIGN_OR_RETURN(engine->patterns_, PatternSchedule::Create(std::move(base), o.length_patterns, config.num_layers));
  config.indexer_types = engine->patterns_.Loaded();
  ASSIGN_OR_RETURN(engine->backend_, CreateBackend(o.device, o.num_threads));
  IC_LOG(Info) << "loading " << o.model_dir << " on " << o.device << " with index pattern "
               << FormatIndexPattern(engine->patterns_.base())
               << (engine->patterns_.adaptive() ? " and, by prompt length, " + engine->patterns_.FormatRanges() : "");
  ModelLoadOptions load;
  load.shared_indexers = o.reuse_telemetry_rate > 0;
  ASSIGN_OR_RETURN(engine->model_, DsaModel::Load(o.model_dir, std::move(config), engine->backend_.get(), load));
  engine->model_->set_decode_graphs(o.cuda_graphs);
  if (load.shared_indexers) engine->StartReuseTelemetry(o.reuse_telemetry_rate);
  {
    ASSIGN_OR_RETURN(WeightStore store, WeightStore::Open(o.model_dir));
    ASSIGN_OR_RETURN(engine->fingerprint_, ModelFingerprint(o.model_dir, store));
  }
  ASSIGN_OR_RETURN(engine->cache_, PagedKvCache::Create(engine->backend_.get(), engine->model_->CacheSpec(o.block_size),
                                                        o.kv_cache_bytes));
  engine->exporter_ = std::make_unique<KvExporter>(*engine->backend_, *engine->cache_);
  engine->importer_ = std::make_unique<KvImporter>(*engine->backend_, *engine->cache_);
  const std::string tokenizer_path = o.model_dir + "/tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) {
    ASSIGN_OR_RETURN(engine->tokenizer_, BpeTokenizer::FromFile(tokenizer_path));
  } else {
    IC_LOG(Info) << "no tokenizer.json in " << o.model_dir << ": the engine runs on token ids only";
  }
  engine->max_batch_tokens_ = o.max_batch_tokens;
  engine->prefix_cache_ = o.prefix_cache;
  for (const LengthPattern& p : engine->patterns_.patterns()) {
    engine->prefix_seeds_.push_back(PrefixCache::Seed(engine->fingerprint_, FormatIndexPattern(p.types)));
    std::vector<bool>& full = engine->index_key_layers_.emplace_back();
    for (IndexerType t : p.types) full.push_back(t == IndexerType::kFull);
  }
  engine->pattern_requests_.assign(engine->patterns_.patterns().size(), 0);
  IC_LOG(Info) << "model ready: " << engine->model_->weights().num_parameters << " parameters, KV cache "
               << engine->cache_->num_blocks() << " blocks of " << o.block_size << " tokens ("
               << engine->cache_->bytes_per_block() << " bytes each)";
  return engine;
}

absl::Status Engine::ValidateRequest(const std::vector<int32_t>& prompt, const SamplingParams& params,
                                     bool prefill_only) const {
  const ModelConfig& c = config();
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t id : prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("prompt token id %d is outside the vocabulary [0, %d)", id, c.vocab_size));
    }
  }
  RETURN_IF_ERROR(Validate(params, c.vocab_size));
  if (params.resumed_tokens < 0 || params.resumed_tokens >= static_cast<int64_t>(prompt.size())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "resumed_tokens %d must leave at least one of the %d prompt ids as the client's prompt",
        params.resumed_tokens, prompt.size()));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + params.max_new_tokens;
  if (total > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max_new_tokens (%d) exceeds the model's %d positions", prompt.size(),
        params.max_new_tokens, c.max_position_embeddings));
  }
  const int64_t cached = prefill_only ? static_cast<int64_t>(prompt.size()) : total;
  if (cache_->BlocksFor(static_cast<int32_t>(cached)) > cache_->num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s (%d tokens) does not fit the KV cache (%d tokens in all)",
        prefill_only ? "the prompt" : "prompt + max_new_tokens", cached,
        int64_t{cache_->num_blocks()} * cache_->block_size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<Engine::Request> Engine::MakeRequest(std::vector<int32_t> prompt, const SamplingParams& params,
                                                    bool prefill_only) {
  RETURN_IF_ERROR(ValidateRequest(prompt, params, prefill_only));
  Request r;
  r.id = next_id_++;
  r.prefill_only = prefill_only;
  r.prompt_len = static_cast<int32_t>(prompt.size());
  r.pattern = PatternFor(static_cast<int64_t>(prompt.size()), params.resumed_tokens);
  r.greedy = params.temperature == 0.0f;
  r.logprobs = params.logprobs;
  r.top_logprobs = params.top_logprobs;
  r.tokens = std::move(prompt);
  ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(params, config().vocab_size, Sampler::RandomSeed()));
  r.sampler.emplace(std::move(sampler));
  const int32_t resumed = params.resumed_tokens;
  // The draws earlier attempts consumed. Token k of a request takes draw k-1 of a single engine's
  // sampler; on a prefill/decode pair the prefill worker's draw 0 serves token 1 and the decode
  // worker's draw k-2 token k (each worker's sampler starts at draw 0). So the next token drawn here
  // takes draw `resumed`, except on a prefill worker: its one token, resumed + 1, is the one the
  // decode side would have drawn as its draw resumed - 1.
  if (resumed > 0) r.sampler->SkipDraws(prefill_only ? resumed - 1 : resumed);
  // The stop conditions count the resumed tokens as generated: the budget is theirs plus the rest.
  SamplingParams stop_params = params;
  stop_params.max_new_tokens += resumed;
  r.stop.emplace(stop_params, config().eos_token_ids);
  if (tokenizer_) r.detok.emplace(tokenizer_.get(), /*skip_special_tokens=*/true);
  // Replays the resumed tokens through detokenization and the stop conditions, discarding their text
  // (the client has it): what an earlier attempt held back — a partial character, the start of a stop
  // string — is held here again, so a stop string spanning the splice still ends the text. A prefill
  // worker does it too: the first token's text it reports is the client's.
  for (int32_t i = r.prompt_len - resumed; i < r.prompt_len; ++i) {
    std::string delta;
    if (r.detok) {
      ASSIGN_OR_RETURN(delta, r.detok->Push(r.tokens[i]));
    }
    ASSIGN_OR_RETURN(StopUpdate update, r.stop->Append(r.tokens[i], delta));
    if (update.finish != FinishReason::kNone) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "resumed token %d of %d already ends the request: nothing is left to generate",
          i - (r.prompt_len - resumed) + 1, resumed));
    }
  }
  return r;
}

int32_t Engine::PatternFor(int64_t prompt_tokens, int64_t resumed_tokens) const {
  // A resumed request's prompt ends with the tokens it generated before: its client's prompt chose.
  return patterns_.PatternFor(prompt_tokens - std::max<int64_t>(resumed_tokens, 0));
}

IndexCacheStats Engine::TakeStats() {
  IndexCacheStats stats = model_->TakeStats();
  stats.pattern_requests = pattern_requests_;
  std::fill(pattern_requests_.begin(), pattern_requests_.end(), 0);
  return stats;
}

RequestId Engine::Admit(Request r) {
  const RequestId id = r.id;
  ++pattern_requests_[r.pattern];
  order_.push_back(id);
  requests_.emplace(id, std::move(r));
  return id;
}

void Engine::StartReuseTelemetry(double rate) {
  // Every Shared layer with indexer weights under some pattern; a pass measures its own pattern's.
  std::vector<int32_t> measured;
  for (const LengthPattern& p : patterns_.patterns()) {
    for (int32_t l : model_->TelemetryLayers(p.types)) {
      if (std::find(measured.begin(), measured.end(), l) == measured.end()) measured.push_back(l);
    }
  }
  std::sort(measured.begin(), measured.end());
  std::vector<int32_t> without;  // Shared layers whose checkpoint has no indexer weights
  for (int32_t l = 0; l < config().num_layers; ++l) {
    if (config().indexer_types[l] == IndexerType::kShared && !model_->weights().layers[l].has_indexer) {
      without.push_back(l);
    }
  }
  reuse_telemetry_ = !measured.empty();
  telemetry_steps_ = StepSampler(rate);
  // Not an error: a checkpoint saved with IndexCache drops the Shared layers' indexers, and telemetry
  // then has nothing to compare with on those layers.
  if (!without.empty()) {
    IC_LOG(Info) << "reuse telemetry: the checkpoint has no indexer weights for Shared layers ["
                 << absl::StrJoin(without, ",") << "]; their reuse is not measured";
  }
  if (reuse_telemetry_) {
    IC_LOG(Info) << "reuse telemetry: Shared layers [" << absl::StrJoin(measured, ",")
                 << "] run their own indexer on a share " << rate
                 << " of the steps that start a prompt (rows whose context is all in the step)";
  }
}

absl::StatusOr<RequestId> Engine::Submit(std::vector<int32_t> prompt, const SamplingParams& params) {
  ASSIGN_OR_RETURN(Request r, MakeRequest(std::move(prompt), params, /*prefill_only=*/false));
  r.prefix_cached = prefix_cache_;
  return Admit(std::move(r));
}

absl::StatusOr<RequestId> Engine::SubmitPrefill(std::vector<int32_t> prompt, const SamplingParams& params,
                                                std::shared_ptr<SegmentSink> export_to, int32_t export_from) {
  ASSIGN_OR_RETURN(Request r, MakeRequest(std::move(prompt), params, /*prefill_only=*/true));
  if (export_from < 0 || export_from >= r.prompt_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the export cannot start at position %d of a %d-token prompt", export_from, r.prompt_len));
  }
  r.export_to = std::move(export_to);
  r.exported = export_from;
  r.prefix_cached = prefix_cache_;
  return Admit(std::move(r));
}

absl::StatusOr<Engine::Request*> Engine::Find(RequestId id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return absl::NotFoundError(absl::StrFormat("no request %d", id));
  return &it->second;
}

absl::StatusOr<int32_t> Engine::CachedTokens(RequestId id) const {
  auto it = requests_.find(id);
  if (it == requests_.end()) return absl::NotFoundError(absl::StrFormat("no request %d", id));
  return it->second.num_cached;
}

absl::StatusOr<KvSegment> Engine::ExportSegment(RequestId id, int32_t begin, int32_t end) {
  ASSIGN_OR_RETURN(Request * r, Find(id));
  if (begin < 0 || end < begin || end > r->num_cached) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "request %d: positions [%d, %d) are not computed yet (%d cached)", id, begin, end, r->num_cached));
  }
  return exporter_->Export(id, begin, end, RowsMemory::kHost, index_key_layers_[r->pattern]);
}

absl::StatusOr<std::vector<IndexerProbe>> Engine::TakeProbes(RequestId id) {
  ASSIGN_OR_RETURN(Request * r, Find(id));
  if (r->state != State::kHeldForExport) {
    return absl::FailedPreconditionError(absl::StrFormat("request %d has not finished prefill", id));
  }
  return std::move(r->probes);
}

void Engine::Release(RequestId id) {
  if (requests_.contains(id)) Finish(id);
}

absl::StatusOr<RequestId> Engine::AdmitImport(std::vector<int32_t> prompt, const SamplingParams& params) {
  ASSIGN_OR_RETURN(Request r, MakeRequest(std::move(prompt), params, /*prefill_only=*/false));
  if (prefix_cache_) {
    r.prefix_cached = true;
    r.publish_limit = r.prompt_len;
    AttachCachedPrefix(r);
  }
  r.import_from = r.num_cached;
  // Room for the prompt and the first decode step, all or nothing: a refusal drops the cached blocks
  // it attached too.
  if (absl::Status reserved = cache_->Reserve(r.id, r.prompt_len + 1); !reserved.ok()) {
    cache_->Release(r.id);
    return reserved;
  }
  r.state = State::kWaitingForRemoteKv;
  return Admit(std::move(r));
}

absl::Status Engine::ImportRows(RequestId id, int32_t layer, KvRowKind kind, int32_t begin, int32_t count,
                                LandedRows rows) {
  ASSIGN_OR_RETURN(Request * r, Find(id));
  if (r->state != State::kWaitingForRemoteKv) {
    return absl::FailedPreconditionError(absl::StrFormat("request %d takes no rows now", id));
  }
  if (begin < r->import_from) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "rows from position %d of request %d: positions before %d are this worker's cached prefix", begin, id,
        r->import_from));
  }
  if (begin < 0 || begin + static_cast<int64_t>(count) > r->prompt_len) {
    return absl::OutOfRangeError(absl::StrFormat("rows [%d, %d) lie outside the %d-token prompt of request %d", begin,
                                                 begin + count, r->prompt_len, id));
  }
  const std::vector<bool>& full = index_key_layers_[r->pattern];
  if (kind == KvRowKind::kIndexKey && layer >= 0 && layer < static_cast<int32_t>(full.size()) && !full[layer]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "index keys of layer %d for request %d, whose pattern %s runs that layer Shared", layer, id,
        FormatIndexPattern(patterns_.patterns()[r->pattern].types)));
  }
  return importer_->Import(id, layer, kind, begin, count, std::move(rows));
}

absl::StatusOr<std::shared_ptr<LandingArea>> Engine::CreateReceiveArea(size_t bytes, RowsMemory memory) {
  return LandingArea::Create(*backend_, bytes, memory);
}

absl::Status Engine::VerifyProbes(RequestId id, absl::Span<const IndexerProbe> probes) {
  ASSIGN_OR_RETURN(Request * r, Find(id));
  for (const IndexerProbe& probe : probes) {
    const std::vector<bool>& full = index_key_layers_[r->pattern];
    if (probe.layer < 0 || probe.layer >= static_cast<int32_t>(full.size()) || !full[probe.layer]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("request %d's pattern %s has no Full layer %d to check a selection of", id,
                          FormatIndexPattern(patterns_.patterns()[r->pattern].types), probe.layer));
    }
  }
  ASSIGN_OR_RETURN(const std::vector<std::vector<int32_t>> selected,
                   model_->SelectKeys(*cache_, id, r->prompt_len - 1, probes));
  for (size_t i = 0; i < probes.size(); ++i) {
    std::vector<int32_t> want = probes[i].topk, got = selected[i];
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    if (want == got) continue;
    // Differing selections are a corrupted handoff unless every key that differs ties the k-th score
    // to within rounding (topk_near_tie.h): judged from the keys themselves, read back once here.
    absl::StatusOr<std::vector<float>> keys = IndexKeysOf(*r, probes[i].layer);
    absl::Status tie = keys.ok() ? CheckTopKDifferenceIsNearTie(probes[i], *keys, config().index_n_heads,
                                                                config().index_head_dim, selected[i])
                                 : keys.status();
    if (tie.ok()) {
      IC_LOG(Info) << "request " << id << ": layer " << probes[i].layer
                   << "'s recomputed top-k differs from the prefill worker's only at near-ties of the k-th score";
      continue;
    }
    std::vector<int32_t> common;
    std::set_intersection(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(common));
    return absl::DataLossError(absl::StrFormat(
        "handoff integrity check failed: layer %d's top-k recomputed from the received index keys shares %d of %d "
        "keys with the prefill worker's (%s)",
        probes[i].layer, common.size(), want.size(), tie.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Engine::IndexKeysOf(const Request& r, int32_t layer) {
  const int32_t dim = config().index_head_dim;
  std::vector<float> keys;
  keys.reserve(static_cast<size_t>(r.prompt_len) * dim);
  // A chunk at a time, so the staging stays the size of one prefill chunk's.
  for (int32_t begin = 0; begin < r.prompt_len; begin += max_batch_tokens_) {
    const int32_t end = std::min(r.prompt_len, begin + max_batch_tokens_);
    ASSIGN_OR_RETURN(KvSegment segment,
                     exporter_->Export(r.id, begin, end, RowsMemory::kHost, index_key_layers_[r.pattern]));
    const auto& slices = segment.slices();
    auto slice = std::find_if(slices.begin(), slices.end(), [&](const KvSlice& s) {
      return s.layer == layer && s.kind == KvRowKind::kIndexKey;
    });
    if (slice == slices.end()) return absl::InternalError(absl::StrFormat("layer %d keeps no index keys", layer));
    RETURN_IF_ERROR(segment.WaitFor(static_cast<size_t>(slice - slices.begin())));
    const std::string_view bytes = segment.bytes(*slice);
    const size_t values = static_cast<size_t>(end - begin) * dim;
    if (segment.dtype() == DType::kBF16) {
      for (size_t v = 0; v < values; ++v) {
        uint16_t bits;
        std::memcpy(&bits, bytes.data() + 2 * v, sizeof bits);
        keys.push_back(Bf16ToF32(bits));
      }
    } else {
      const size_t at = keys.size();
      keys.resize(at + values);
      std::memcpy(keys.data() + at, bytes.data(), values * sizeof(float));
    }
  }
  return keys;
}

absl::StatusOr<TokenEvent> Engine::StartDecode(RequestId id, int32_t first_token,
                                               std::optional<TokenLogprobs> first_logprobs) {
  ASSIGN_OR_RETURN(Request * r, Find(id));
  if (r->state != State::kWaitingForRemoteKv) {
    return absl::FailedPreconditionError(absl::StrFormat("request %d is not importing", id));
  }
  if (first_token < 0 || first_token >= config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrFormat("first token %d is outside the vocabulary", first_token));
  }
  if (r->logprobs && (!first_logprobs.has_value() || first_logprobs->chosen.token != first_token)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request %d asks for logprobs, but none came for its first token %d", id, first_token));
  }
  r->state = State::kRunning;
  r->num_cached = r->prompt_len;
  TokenEvent event = Accept(*r, first_token);
  if (r->logprobs) event.logprobs = std::move(first_logprobs);
  if (event.finish != RequestFinish::kNone) Finish(id);
  return event;
}

bool Engine::HasWork() const {
  for (const auto& [id, r] : requests_) {
    if ((r.state == State::kRunning && !ExportBlocked(r)) || r.state == State::kAborted) return true;
  }
  return false;
}

void Engine::Abort(RequestId id) {
  auto it = requests_.find(id);
  if (it != requests_.end()) it->second.state = State::kAborted;
}

void Engine::Finish(RequestId id) {
  cache_->Release(id);
  requests_.erase(id);
  order_.erase(std::remove(order_.begin(), order_.end(), id), order_.end());
}

void Engine::Preempt(Request& r) {
  IC_LOG(Info) << "KV cache full: preempting request " << r.id << " (" << r.tokens.size()
               << " tokens will be prefilled again)";
  cache_->Release(r.id);
  r.num_cached = 0;
  r.looked_up = false;
}

void Engine::AttachCachedPrefix(Request& r) {
  r.looked_up = true;
  const int32_t bs = cache_->block_size();
  const int32_t lookup = PrefixCache::LookupBlocks(r.tokens.size(), bs);
  PrefixCache::ExtendChain(prefix_seeds_[r.pattern], bs, r.tokens, lookup, r.block_keys);
  const int32_t hit = cache_->AttachCachedPrefix(r.id, absl::MakeConstSpan(r.block_keys).first(lookup),
                                                 static_cast<int32_t>(r.tokens.size()));
  r.num_cached = hit * bs;
  r.published_blocks = hit;
}

void Engine::PublishFullBlocks(Request& r) {
  const int32_t full = std::min(r.num_cached, r.publish_limit) / cache_->block_size();
  if (full <= r.published_blocks) return;
  PrefixCache::ExtendChain(prefix_seeds_[r.pattern], cache_->block_size(), r.tokens, full, r.block_keys);
  cache_->PublishBlocks(r.id, r.published_blocks,
                        absl::MakeConstSpan(r.block_keys).subspan(r.published_blocks, full - r.published_blocks));
  r.published_blocks = full;
}

ForwardBatch Engine::Schedule(std::vector<Request*>& in_batch) {
  ForwardBatch batch;
  int32_t budget = max_batch_tokens_;
  auto add = [&](Request& r, int32_t take) {
    batch.sequences.push_back(r.id);
    if (patterns_.adaptive()) batch.sequence_indexer_types.push_back(patterns_.patterns()[r.pattern].types);
    for (int32_t i = 0; i < take; ++i) {
      const int32_t pos = r.num_cached + i;
      batch.token_ids.push_back(r.tokens[pos]);
      batch.positions.push_back(pos);
      batch.token_seq.push_back(static_cast<int32_t>(batch.sequences.size()) - 1);
    }
    if (r.num_cached + take == static_cast<int32_t>(r.tokens.size())) {
      batch.logit_rows.push_back(static_cast<int32_t>(batch.token_ids.size()) - 1);
      // Greedy rows need only their argmax; a sampled row's token is drawn on the device too, with the
      // one uniform its Sampler draws here (a greedy request's NextDraw consumes nothing).
      batch.argmax_only = (batch.logit_rows.size() == 1 || batch.argmax_only) && r.greedy;
      batch.draws.push_back(r.sampler->NextDraw());
      if (r.logprobs) batch.logprob_rows.push_back(static_cast<int32_t>(batch.logit_rows.size()) - 1);
      if (r.prefill_only) batch.probe_rows.push_back(static_cast<int32_t>(batch.token_ids.size()) - 1);
    }
    in_batch.push_back(&r);
    budget -= take;
  };
  // Decoding requests first: one token each.
  for (size_t i = 0; i < order_.size() && budget > 0; ++i) {
    Request& r = requests_.at(order_[i]);
    if (r.state != State::kRunning || !Decoding(r)) continue;
    absl::Status reserved = cache_->Reserve(r.id, r.num_cached + 1);
    while (!reserved.ok()) {
      // Free the most recently admitted other request that holds cache; with none newer, this one
      // steps back itself (older requests keep priority, so the oldest always progresses).
      Request* victim = nullptr;
      for (size_t j = order_.size(); j-- > i + 1;) {
        Request& other = requests_.at(order_[j]);
        // Held and importing requests are not preempted: their rows cannot be recomputed here.
        if (cache_->Contains(other.id) && other.state == State::kRunning &&
            std::find(in_batch.begin(), in_batch.end(), &other) == in_batch.end()) {
          victim = &other;
          break;
        }
      }
      if (victim == nullptr) {
        Preempt(r);
        break;
      }
      Preempt(*victim);
      reserved = cache_->Reserve(r.id, r.num_cached + 1);
    }
    if (!reserved.ok()) continue;
    add(r, 1);
  }
  // Then prompt chunks, in arrival order, while the budget and the cache allow.
  for (RequestId id : order_) {
    if (budget <= 0) break;
    Request& r = requests_.at(id);
    // Looked up when it first gets a chance to run, not at Submit: by then the requests ahead of it
    // may have computed the prefix it shares with them.
    const bool attach = r.state == State::kRunning && r.prefix_cached && !r.looked_up;
    if (attach) AttachCachedPrefix(r);
    // A decode step was taken above, unless the cache just supplied all but the last prompt token.
    if (r.state != State::kRunning || (Decoding(r) && !attach) || ExportBlocked(r)) continue;
    if (r.export_to && r.exported < r.num_cached) {
      // A streaming request's sink gets its cached positions first, a chunk per step (staging no
      // larger than a computed chunk's, under the same backpressure); computing starts after them.
      SendCachedRows(r);
      continue;
    }
    const int32_t take = std::min(static_cast<int32_t>(r.tokens.size()) - r.num_cached, budget);
    if (!cache_->Reserve(r.id, r.num_cached + take).ok()) break;  // waits for memory
    add(r, take);
  }
  if (batch.argmax_only) batch.draws.clear();  // every row greedy: ArgMax alone serves them
  return batch;
}

TokenEvent Engine::Advance(Request& r, const absl::StatusOr<int32_t>& token, absl::Span<const float> logits) {
  if (!token.ok()) return TokenEvent::Ended(r.id, RequestFinish::kError, token.status());
  std::optional<TokenLogprobs> logprobs;
  if (r.logprobs) {
    absl::StatusOr<TokenLogprobs> computed = ComputeLogprobs(logits, *token, r.top_logprobs);
    if (!computed.ok()) return TokenEvent::Ended(r.id, RequestFinish::kError, computed.status());
    logprobs = *std::move(computed);
  }
  TokenEvent event = Accept(r, *token);
  if (r.prefill_only && event.finish != RequestFinish::kError) {
    // The event carries the token's text for the client; whether it ends the request is the decode
    // worker's to report (it applies the same stop conditions to the same token).
    r.state = State::kHeldForExport;
    event.finish = RequestFinish::kPrefillDone;
  }
  event.logprobs = std::move(logprobs);
  return event;
}

TokenEvent Engine::Accept(Request& r, int32_t token) {
  TokenEvent event;
  event.request = r.id;
  event.token = token;
  r.tokens.push_back(token);
  std::string delta;
  if (r.detok) {
    auto text = r.detok->Push(token);
    if (text.ok()) delta = *std::move(text);
  }
  auto update = r.stop->Append(token, delta);
  if (!update.ok()) {
    event.finish = RequestFinish::kError;
    event.error = update.status();
    return event;
  }
  event.text = std::move(update->text);
  event.finish = FromStop(update->finish);
  return event;
}

absl::StatusOr<std::vector<TokenEvent>> Engine::Step() {
  std::vector<TokenEvent> events;
  for (RequestId id : std::vector<RequestId>(order_.begin(), order_.end())) {
    if (requests_.at(id).state == State::kAborted) {
      events.push_back(TokenEvent::Ended(id, RequestFinish::kAbort));
      Finish(id);
    }
  }
  std::vector<Request*> in_batch;
  ForwardBatch batch = Schedule(in_batch);
  if (batch.token_ids.empty()) return events;
  // Telemetry measures only sequences that start at position 0 in the pass (reuse_telemetry.h), so
  // only steps holding one are offered to the sampler.
  if (reuse_telemetry_ && std::find(batch.positions.begin(), batch.positions.end(), 0) != batch.positions.end()) {
    batch.reuse_telemetry = telemetry_steps_.Next();
  }
  const std::vector<KvSegment> exports = BeginExports(in_batch, batch);
  if (!exports.empty()) {
    batch.after_cache_write = [&](int32_t layer) {
      for (const KvSegment& segment : exports) exporter_->ExportLayer(segment, layer);
    };
  }
  auto forward = model_->Forward(batch, *cache_);
  for (const KvSegment& segment : exports) exporter_->End(segment, forward.status());
  if (!forward.ok()) {
    // The batch's requests cannot continue (their cache rows are incomplete): fail them, free their
    // blocks, and keep the engine serving the others.
    IC_LOG(Error) << "forward pass failed for " << in_batch.size() << " requests: " << forward.status();
    for (Request* r : in_batch) {
      events.push_back(TokenEvent::Ended(r->id, RequestFinish::kError, forward.status()));
      Finish(r->id);
    }
    return events;
  }
  ForwardResult& result = *forward;
  size_t logit_index = 0, probe_index = 0, logprob_index = 0;
  const size_t vocab = static_cast<size_t>(config().vocab_size);
  std::vector<RequestId> finished;
  for (size_t s = 0; s < in_batch.size(); ++s) {
    Request& r = *in_batch[s];
    const int32_t added = static_cast<int32_t>(std::count(batch.token_seq.begin(), batch.token_seq.end(), s));
    r.num_cached += added;
    if (r.prefix_cached) PublishFullBlocks(r);
    if (r.num_cached != static_cast<int32_t>(r.tokens.size())) continue;  // prompt not done yet
    if (r.prefill_only) r.probes = std::move(result.probes[probe_index++]);
    const size_t row = logit_index++;
    const absl::StatusOr<int32_t> token =
        DeviceToken(r.greedy ? result.argmax[row] : result.sampled[row], config().vocab_size);
    absl::Span<const float> logits;
    if (r.logprobs) logits = absl::MakeConstSpan(result.logprob_logits).subspan(logprob_index++ * vocab, vocab);
    TokenEvent event = Advance(r, token, logits);
    if (event.finish != RequestFinish::kNone && event.finish != RequestFinish::kPrefillDone) {
      finished.push_back(r.id);
    }
    events.push_back(std::move(event));
  }
  for (RequestId id : finished) Finish(id);
  return events;
}

void Engine::SendCachedRows(Request& r) {
  const int32_t begin = r.exported;
  const int32_t end = std::min(r.num_cached, begin + max_batch_tokens_);
  r.exported = end;
  absl::StatusOr<KvSegment> segment =
      exporter_->Export(r.id, begin, end, r.export_to->memory(), index_key_layers_[r.pattern]);
  // The rows cannot leave: the receiver sees the failure where it waits for them.
  r.export_to->Take(segment.ok() ? *std::move(segment)
                                 : exporter_->Failed(begin, end, Annotate(segment.status(), "exporting cached rows")));
}

std::vector<KvSegment> Engine::BeginExports(const std::vector<Request*>& in_batch, const ForwardBatch& batch) {
  std::vector<KvSegment> exports;
  for (size_t s = 0; s < in_batch.size(); ++s) {
    Request& r = *in_batch[s];
    if (!r.export_to) continue;
    const int32_t added = static_cast<int32_t>(std::count(batch.token_seq.begin(), batch.token_seq.end(), s));
    const int32_t begin = std::max(r.num_cached, r.exported);
    const int32_t end = r.num_cached + added;
    if (end <= begin) continue;  // recomputing what a preempted request already sent
    r.exported = end;
    absl::StatusOr<KvSegment> segment =
        exporter_->Begin(r.id, begin, end, r.export_to->memory(), index_key_layers_[r.pattern]);
    if (!segment.ok()) {
      // The rows cannot leave: the receiver sees the failure where it waits for them.
      r.export_to->Take(exporter_->Failed(begin, end, Annotate(segment.status(), "exporting the prompt's cache rows")));
      continue;
    }
    r.export_to->Take(*segment);
    exports.push_back(*std::move(segment));
  }
  return exports;
}

absl::Status Engine::ScoreChunks(const std::vector<int32_t>& ids, bool capture_topk,
                                 const std::function<absl::Status(int32_t, const ForwardResult&)>& on_chunk) {
  const ModelConfig& c = config();
  if (ids.empty()) return absl::InvalidArgumentError("nothing to score: the input is empty");
  if (static_cast<int64_t>(ids.size()) > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat("%d tokens exceed the model's %d positions", ids.size(),
                                                      c.max_position_embeddings));
  }
  absl::Status status = cache_->Reserve(kScoringSequence, static_cast<int32_t>(ids.size()));
  for (int32_t begin = 0; status.ok() && begin < static_cast<int32_t>(ids.size()); begin += max_batch_tokens_) {
    const int32_t end = std::min<int32_t>(ids.size(), begin + max_batch_tokens_);
    ForwardBatch batch;
    batch.sequences = {kScoringSequence};
    batch.capture_topk = capture_topk;
    // With an adaptive pattern, the pattern a prompt of this length runs (the model runs them all).
    if (patterns_.adaptive()) batch.indexer_types = patterns_.TypesFor(static_cast<int64_t>(ids.size()));
    for (int32_t pos = begin; pos < end; ++pos) {
      batch.token_ids.push_back(ids[pos]);
      batch.positions.push_back(pos);
      batch.token_seq.push_back(0);
      batch.logit_rows.push_back(pos - begin);
    }
    auto result = model_->Forward(batch, *cache_);
    status = result.ok() ? on_chunk(begin, *result) : result.status();
  }
  cache_->Release(kScoringSequence);
  return status;
}

}  // namespace indexcache
