#include "bench/engine_runs.h"

#include <algorithm>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "bench/first_token.h"
#include "bench/prompts.h"
#include "common/engine/engine.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {
namespace {

// Seconds the engine spent in each timed region since the last call (resets them).
struct RegionSeconds {
  double indexer = 0.0, attention = 0.0, moe = 0.0;
};

RegionSeconds TakeRegions(Engine& engine, double* indexer_flops = nullptr) {
  RegionSeconds r;
  const IndexCacheStats stats = engine.TakeStats();
  r.indexer = stats.indexer_seconds;
  if (indexer_flops != nullptr) *indexer_flops = stats.indexer_flops;
  Backend* backend = engine.model().backend();
  r.attention = backend->TakeRegionSeconds(TimedRegion::kAttention);
  r.moe = backend->TakeRegionSeconds(TimedRegion::kMoe);
  return r;
}

RegionShares SharesOf(const RegionSeconds& r, double wall) {
  if (wall <= 0.0) return {};
  return {r.indexer / wall, r.attention / wall, r.moe / wall};
}

// One pattern under test: its engine and what was measured on it.
struct Contender {
  std::unique_ptr<Engine> engine;
  PatternResults results;
};

// Timed repetitions of one case on one contender. Shares are taken per repetition and summarized
// by their median, so one repetition slowed by other load does not skew them.
struct CaseTimes {
  std::vector<double> seconds;
  std::vector<RegionShares> shares;
  double indexer_flops = 0.0;

  void Add(double wall, const RegionSeconds& regions) {
    seconds.push_back(wall);
    shares.push_back(SharesOf(regions, wall));
  }
  RegionShares MedianShares() const {
    std::vector<double> indexer, attention, moe;
    for (const RegionShares& s : shares) {
      indexer.push_back(s.indexer);
      attention.push_back(s.attention);
      moe.push_back(s.moe);
    }
    return {Summarize(indexer).median, Summarize(attention).median, Summarize(moe).median};
  }
};

absl::Status MeasurePrefill(std::vector<Contender>& contenders, const EngineBenchOptions& o, int32_t length) {
  // Warm-up on one chunk: it runs every op once and grows the workspace to a chunk's size.
  for (Contender& c : contenders) {
    RETURN_IF_ERROR(PrefillOnce(*c.engine, std::min(length, o.max_batch_tokens), 7).status());
    TakeRegions(*c.engine);
  }
  // Single-chunk prompts cost little and vary more: three times the repetitions. Every repetition
  // runs the same prompt on each pattern in turn.
  const int reps = length <= o.max_batch_tokens ? 3 * o.prefill_reps : o.prefill_reps;
  std::vector<CaseTimes> times(contenders.size());
  for (int rep = 0; rep < reps; ++rep) {
    for (size_t i = 0; i < contenders.size(); ++i) {
      ASSIGN_OR_RETURN(double s, PrefillOnce(*contenders[i].engine, length, 1000 + rep));
      double flops = 0.0;
      times[i].Add(s, TakeRegions(*contenders[i].engine, &flops));
      times[i].indexer_flops += flops;
    }
  }
  for (size_t i = 0; i < contenders.size(); ++i) {
    PrefillResult r;
    r.prompt_len = length;
    r.seconds = Summarize(times[i].seconds);
    r.shares = times[i].MedianShares();
    r.engine_indexer_flops = times[i].indexer_flops / reps;
    r.tokens_per_s = length / r.seconds.median;
    r.cost = PrefillCost(contenders[i].engine->config(), length, o.max_batch_tokens);
    r.gflops = r.cost.flops() / r.seconds.median * 1e-9;
    contenders[i].results.prefill.push_back(r);
  }
  return absl::OkStatus();
}

// The decoding sequences of one contender and the tokens each has produced.
struct DecodeState {
  std::vector<RequestId> live;
  absl::flat_hash_map<RequestId, int32_t> generated;
};

// Runs one Step; returns the number of tokens it produced.
absl::StatusOr<int32_t> DecodeStep(Engine& engine, DecodeState& state) {
  ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine.Step());
  int32_t tokens = 0;
  for (const TokenEvent& e : events) {
    if (e.finish == RequestFinish::kError) return e.error;
    if (e.token >= 0) {
      ++state.generated[e.request];
      ++tokens;
    }
    if (e.finish == RequestFinish::kLength) return absl::InternalError("decode: a sequence ran out of new tokens");
  }
  return tokens;
}

// Decodes at `context` for every batch size (largest first) on one set of prefilled sequences per
// contender; the timed steps alternate between contenders, so both see the same machine.
absl::Status MeasureDecode(std::vector<Contender>& contenders, const EngineBenchOptions& o, int32_t context) {
  std::vector<int32_t> batches = o.decode_batches;
  std::sort(batches.rbegin(), batches.rend());
  const int32_t widest = batches.front();
  // Enough new tokens for the decoding some sequences do while later ones prefill, plus every phase.
  const int32_t chunks = (context + o.max_batch_tokens - 1) / o.max_batch_tokens;
  const int32_t max_new =
      widest * chunks + static_cast<int32_t>(batches.size()) * (o.decode_warmup_steps + o.decode_steps + 1);
  std::vector<DecodeState> states(contenders.size());
  for (size_t i = 0; i < contenders.size(); ++i) {
    Engine& engine = *contenders[i].engine;
    DecodeState& state = states[i];
    for (int32_t b = 0; b < widest; ++b) {
      ASSIGN_OR_RETURN(RequestId id,
                       engine.Submit(RandomPrompt(context, engine.config().vocab_size, 5000 + b), Greedy(max_new)));
      state.live.push_back(id);
      state.generated[id] = 0;
    }
    auto all_decoding = [&] {
      return std::all_of(state.live.begin(), state.live.end(), [&](RequestId id) { return state.generated[id] > 0; });
    };
    while (!all_decoding()) RETURN_IF_ERROR(DecodeStep(engine, state).status());
  }

  for (int32_t batch : batches) {
    for (size_t i = 0; i < contenders.size(); ++i) {
      while (static_cast<int32_t>(states[i].live.size()) > batch) {
        contenders[i].engine->Abort(states[i].live.back());
        states[i].live.pop_back();
      }
      for (int s = 0; s < o.decode_warmup_steps; ++s)
        RETURN_IF_ERROR(DecodeStep(*contenders[i].engine, states[i]).status());
      TakeRegions(*contenders[i].engine);
    }
    std::vector<CaseTimes> times(contenders.size());
    std::vector<DecodeResult> results(contenders.size());
    std::vector<double> position_sum(contenders.size(), 0.0);
    for (int step = 0; step < o.decode_steps; ++step) {
      for (size_t i = 0; i < contenders.size(); ++i) {
        // The token fed this step sits at position prompt + generated − 1 of its sequence.
        std::vector<std::vector<int32_t>> positions;
        for (RequestId id : states[i].live) {
          positions.push_back({context + states[i].generated[id] - 1});
          position_sum[i] += positions.back()[0];
        }
        results[i].cost += CostOfPass(contenders[i].engine->config(), positions, batch);
        const double start = NowSeconds();
        ASSIGN_OR_RETURN(int32_t tokens, DecodeStep(*contenders[i].engine, states[i]));
        times[i].Add(NowSeconds() - start, TakeRegions(*contenders[i].engine));
        if (tokens != batch) {
          return absl::InternalError(
              absl::StrFormat("decode: a step produced %d tokens for a batch of %d", tokens, batch));
        }
      }
    }
    for (size_t i = 0; i < contenders.size(); ++i) {
      DecodeResult& r = results[i];
      r.batch = batch;
      r.context = context;
      r.shares = times[i].MedianShares();
      r.step_seconds = Summarize(times[i].seconds);
      r.mean_position = position_sum[i] / (static_cast<double>(o.decode_steps) * batch);
      r.cost.Scale(1.0 / o.decode_steps);
      r.tokens_per_s = batch / r.step_seconds.median;
      r.gflops = r.cost.flops() / r.step_seconds.median * 1e-9;
      contenders[i].results.decode.push_back(r);
    }
  }
  for (size_t i = 0; i < contenders.size(); ++i) {
    for (RequestId id : states[i].live) contenders[i].engine->Abort(id);
    while (contenders[i].engine->HasWork()) RETURN_IF_ERROR(DecodeStep(*contenders[i].engine, states[i]).status());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<PatternResults>> RunPatterns(const EngineBenchOptions& o,
                                                        const std::vector<PatternSpec>& specs) {
  std::vector<Contender> contenders;
  for (const PatternSpec& spec : specs) {
    EngineOptions eo;
    eo.model_dir = o.model_dir;
    eo.num_threads = o.threads;
    eo.index_pattern = spec.index_pattern;
    eo.index_freq = spec.index_freq;
    eo.max_batch_tokens = o.max_batch_tokens;
    auto engine = Engine::Create(eo);
    if (!engine.ok()) return Annotate(engine.status(), spec.name);
    Contender c;
    c.engine = *std::move(engine);
    c.results.spec = spec;
    c.results.layers = FormatIndexPattern(c.engine->config().indexer_types);
    contenders.push_back(std::move(c));
  }
  for (int32_t length : o.prefill_lengths) {
    absl::Status s = MeasurePrefill(contenders, o, length);
    if (!s.ok()) return Annotate(s, absl::StrFormat("prefill of %d tokens", length));
  }
  if (!o.decode_batches.empty()) {
    for (int32_t context : o.decode_contexts) {
      absl::Status s = MeasureDecode(contenders, o, context);
      if (!s.ok()) return Annotate(s, absl::StrFormat("decode at context %d", context));
    }
  }
  std::vector<PatternResults> out;
  for (Contender& c : contenders) out.push_back(std::move(c.results));
  return out;
}

}  // namespace indexcache::bench
