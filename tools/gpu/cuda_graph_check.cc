// GPU check of the decode graphs (common/model/decode_graphs.h): a decode step replayed from a CUDA
// graph must compute what the same step computes op by op.
//
// What is exact and what is not. A replay runs the very kernels, with the very launch shapes, that
// the op-by-op pass of the padded batch runs, so replay and padded op-by-op pass are asserted
// bit-identical. Against the unpadded op-by-op pass (graphs off) the real rows are bit-identical when
// padding changes no launch shape: the batch is a bucket size (a power of two) and every context is at
// least index_topk (the selection width is min(index_topk, max context), padded to the context bucket
// in a graph). Otherwise two shapes move and with them float summation orders, not values computed:
// sparse MLA splits each row's keys over more or fewer blocks when the row count changes, and cuBLAS
// may pick another kernel for another row count. Those rows are asserted within 1e-4 of the row scale
// (on this model they came out bit-identical too, 2026-11-22: its 64-key selection is never split and
// cuBLAS kept its kernels), and greedy decoding through the engine, graphs on against off, is asserted
// token for token over batches that shrink across bucket boundaries as requests finish and contexts
// that cross a context bucket while decoding.
// Not a ctest test (needs a GPU): tools/gpu/check_cuda.sh runs it on the device.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/backend/backend.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
constexpr int32_t kBlockSize = 16;

int32_t TokenAt(int32_t seq, int32_t pos) { return (seq * 131 + pos * 37 + 5) % 2000; }

// Largest |a - b| over the row scale (max |a|), per row; 0 when bit-identical.
double MaxRelativeDiff(const std::vector<float>& a, const std::vector<float>& b, int64_t cols) {
  double worst = 0.0;
  for (size_t r = 0; r * cols < a.size(); ++r) {
    double diff = 0.0, scale = 1e-30;
    for (int64_t j = 0; j < cols; ++j) {
      diff = std::max(diff, std::fabs(double{a[r * cols + j]} - b[r * cols + j]));
      scale = std::max(scale, std::fabs(double{a[r * cols + j]}));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct ModelOnGpu {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<DsaModel> model;
  std::unique_ptr<PagedKvCache> cache;
};

ModelOnGpu Load() {
  ModelOnGpu m;
  auto backend = CreateBackend("cuda");
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return m;
  m.backend = std::move(*backend);
  auto config = LoadModelConfig(kModel);
  EXPECT_TRUE(config.ok()) << config.status();
  auto model = DsaModel::Load(kModel, *config, m.backend.get());
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return m;
  m.model = std::move(*model);
  auto cache = PagedKvCache::Create(m.backend.get(), m.model->CacheSpec(kBlockSize), size_t{256} << 20);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (cache.ok()) m.cache = std::move(*cache);
  return m;
}

// Prefills sequence `seq` with `length` tokens op by op (graphs off), in chunks of 256.
void Prefill(ModelOnGpu& m, SequenceId seq, int32_t length) {
  ASSERT_TRUE(m.cache->Reserve(seq, length).ok());
  for (int32_t begin = 0; begin < length; begin += 256) {
    ForwardBatch b;
    b.sequences = {seq};
    for (int32_t pos = begin; pos < std::min(length, begin + 256); ++pos) {
      b.token_ids.push_back(TokenAt(seq, pos));
      b.positions.push_back(pos);
      b.token_seq.push_back(0);
    }
    ASSERT_TRUE(m.model->Forward(b, *m.cache).ok());
  }
}

// One decode token for each of `lengths.size()` sequences (ids 1..n) at position lengths[i].
ForwardBatch DecodeBatch(ModelOnGpu& m, const std::vector<int32_t>& lengths) {
  ForwardBatch b;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const SequenceId seq = static_cast<SequenceId>(i + 1);
    EXPECT_TRUE(m.cache->Reserve(seq, lengths[i] + 1).ok());
    b.sequences.push_back(seq);
    b.token_ids.push_back(TokenAt(seq, lengths[i]));
    b.positions.push_back(lengths[i]);
    b.token_seq.push_back(static_cast<int32_t>(i));
    b.logit_rows.push_back(static_cast<int32_t>(i));
  }
  return b;
}

std::vector<float> Logits(ModelOnGpu& m, const ForwardBatch& b) {
  auto r = m.model->Forward(b, *m.cache);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->logits : std::vector<float>{};
}

// The same decode step three times on the same cache state (each rewrites its tokens' cache rows with
// the same values): op by op, then with graphs on — the bucket's first step runs op by op at the
// padded shape and records, the second replays.
TEST(CudaDecodeGraphCheck, ReplayEqualsOpByOp) {
  ModelOnGpu m = Load();
  ASSERT_NE(m.cache, nullptr);
  const int32_t vocab = m.model->config().vocab_size, topk = m.model->config().index_topk;
  struct Case {
    std::vector<int32_t> lengths;
  };
  const std::vector<Case> cases = {{{300}},           {{40}},
                                   {{100, 260}},      {{90, 130, 70}},
                                   {{65, 80, 95, 250, 400, 70, 66, 300}},
                                   {{255, 256, 1023, 70, 90}},
                                   {{100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 240, 250,
                                     260}}};
  for (const Case& c : cases) {
    const int64_t n = static_cast<int64_t>(c.lengths.size());
    for (int64_t i = 0; i < n; ++i) Prefill(m, i + 1, c.lengths[i]);
    const ForwardBatch b = DecodeBatch(m, c.lengths);
    m.model->set_decode_graphs(false);
    const std::vector<float> eager = Logits(m, b);
    m.model->set_decode_graphs(true);
    const std::vector<float> padded = Logits(m, b);
    const std::vector<float> replayed = Logits(m, b);
    ASSERT_NE(m.model->decode_graphs(), nullptr);
    EXPECT_EQ(m.model->decode_graphs()->recordings(), 1);
    EXPECT_EQ(m.model->decode_graphs()->replays(), 1);
    ASSERT_EQ(replayed.size(), static_cast<size_t>(n * vocab));
    EXPECT_TRUE(BitIdentical(replayed, padded)) << "rows " << n;
    const bool same_shapes = DecodeGraphs::RowsBucket(n) == n &&
                             *std::min_element(c.lengths.begin(), c.lengths.end()) + 1 >= topk;
    const double diff = MaxRelativeDiff(eager, replayed, vocab);
    if (same_shapes) {
      EXPECT_TRUE(BitIdentical(eager, replayed)) << "rows " << n << ": " << diff;
    } else {
      EXPECT_LT(diff, 1e-4) << "rows " << n;
    }
    std::printf("  %2lld rows (bucket %lld), contexts %d..%d: replay %s the padded op-by-op pass; vs graphs off: %s\n",
                static_cast<long long>(n), static_cast<long long>(DecodeGraphs::RowsBucket(n)),
                *std::min_element(c.lengths.begin(), c.lengths.end()) + 1,
                *std::max_element(c.lengths.begin(), c.lengths.end()) + 1,
                BitIdentical(replayed, padded) ? "bit-identical to" : "DIFFERS from",
                BitIdentical(eager, replayed) ? "bit-identical" : ("max diff " + std::to_string(diff) + " of row scale").c_str());
    for (int64_t i = 0; i < n; ++i) m.cache->Release(i + 1);
  }
}

// A pass that grows the backend's scratch (a long prefill) moves memory the recordings point at:
// the next decode step must record again, not replay stale addresses.
TEST(CudaDecodeGraphCheck, ScratchGrowthForcesARecording) {
  ModelOnGpu m = Load();
  ASSERT_NE(m.cache, nullptr);
  const std::vector<int32_t> lengths = {200, 300};
  for (int64_t i = 0; i < 2; ++i) Prefill(m, i + 1, lengths[i]);
  const ForwardBatch b = DecodeBatch(m, lengths);
  m.model->set_decode_graphs(false);
  const std::vector<float> eager = Logits(m, b);
  m.model->set_decode_graphs(true);
  Logits(m, b);
  const uint64_t epoch = m.backend->scratch_epoch();
  Prefill(m, 99, 4000);  // 256-token chunks at 4K context: a larger indexer-logits area than decode's
  ASSERT_NE(m.backend->scratch_epoch(), epoch) << "the prefill did not grow the scratch; the check tests nothing";
  const std::vector<float> again = Logits(m, b);
  EXPECT_EQ(m.model->decode_graphs()->recordings(), 2);
  EXPECT_EQ(m.model->decode_graphs()->replays(), 0);
  EXPECT_TRUE(BitIdentical(eager, again)) << MaxRelativeDiff(eager, again, m.model->config().vocab_size);
  const std::vector<float> replayed = Logits(m, b);
  EXPECT_EQ(m.model->decode_graphs()->replays(), 1);
  EXPECT_TRUE(BitIdentical(eager, replayed));
}

// Greedy decoding through the engine with graphs on and off, token for token. With `logprobs`, every
// request asks for its tokens' logprobs (5 alternatives), collected there per request.
// `length_patterns`: an adaptive pattern (EngineOptions::length_patterns), "" for none.
std::vector<std::vector<int32_t>> Greedy(bool graphs, const std::vector<int32_t>& prompt_lengths,
                                         const std::vector<int32_t>& new_tokens, int64_t* replays,
                                         std::vector<std::vector<TokenLogprobs>>* logprobs = nullptr,
                                         const std::string& length_patterns = "") {
  EngineOptions options;
  options.model_dir = kModel;
  options.device = "cuda";
  options.block_size = kBlockSize;
  options.max_batch_tokens = 512;
  options.kv_cache_bytes = size_t{256} << 20;
  options.cuda_graphs = graphs;
  options.length_patterns = length_patterns;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  Engine& e = **engine;
  std::vector<RequestId> ids;
  for (size_t i = 0; i < prompt_lengths.size(); ++i) {
    std::vector<int32_t> prompt(prompt_lengths[i]);
    for (int32_t p = 0; p < prompt_lengths[i]; ++p) prompt[p] = TokenAt(static_cast<int32_t>(i), p);
    SamplingParams params;
    params.temperature = 0.0f;
    params.max_new_tokens = new_tokens[i];
    params.ignore_eos = true;
    params.logprobs = logprobs != nullptr;
    params.top_logprobs = logprobs != nullptr ? 5 : 0;
    auto id = e.Submit(prompt, params);
    EXPECT_TRUE(id.ok()) << id.status();
    ids.push_back(id.ok() ? *id : -1);
  }
  std::vector<std::vector<int32_t>> out(ids.size());
  if (logprobs != nullptr) logprobs->assign(ids.size(), {});
  while (e.HasWork()) {
    auto events = e.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& ev : *events) {
      EXPECT_NE(ev.finish, RequestFinish::kError) << ev.error;
      const size_t i = std::find(ids.begin(), ids.end(), ev.request) - ids.begin();
      if (ev.token >= 0 && i < out.size()) out[i].push_back(ev.token);
      if (ev.token >= 0 && i < out.size() && logprobs != nullptr) {
        EXPECT_TRUE(ev.logprobs.has_value());
        if (ev.logprobs) (*logprobs)[i].push_back(*ev.logprobs);
      }
    }
  }
  *replays = e.model().decode_graphs() == nullptr ? 0 : e.model().decode_graphs()->replays();
  return out;
}

TEST(CudaDecodeGraphCheck, GreedyDecodingMatchesGraphsOff) {
  struct Scenario {
    const char* what;
    std::vector<int32_t> prompt_lengths, new_tokens;
  };
  std::vector<Scenario> scenarios = {
      // 6 requests finishing one after another: batches of 6, 5, …, 1 (buckets 8, 4, 2, 1); the 245-
      // and 1015-token prompts cross the 256 and 1024 context buckets while decoding.
      {"shrinking batch, contexts crossing buckets", {245, 70, 130, 1015, 33, 90}, {30, 4, 9, 20, 14, 25}},
      {"one sequence across a context bucket", {500}, {40}},
  };
  Scenario wide{"17 rows (bucket 32) shrinking to 16 and below", {}, {}};
  for (int32_t i = 0; i < 17; ++i) {
    wide.prompt_lengths.push_back(60 + 23 * i);
    wide.new_tokens.push_back(6 + (i % 5) * 3);
  }
  scenarios.push_back(wide);
  for (const Scenario& s : scenarios) {
    int64_t replays_off = 0, replays_on = 0;
    const auto off = Greedy(false, s.prompt_lengths, s.new_tokens, &replays_off);
    const auto on = Greedy(true, s.prompt_lengths, s.new_tokens, &replays_on);
    ASSERT_EQ(off.size(), s.prompt_lengths.size());
    EXPECT_EQ(on, off) << s.what;
    for (size_t i = 0; i < off.size(); ++i) EXPECT_EQ(off[i].size(), static_cast<size_t>(s.new_tokens[i]));
    EXPECT_EQ(replays_off, 0);
    EXPECT_GT(replays_on, 0) << s.what << ": no step was replayed";
    std::printf("  %s: graphs on %s graphs off (%lld steps replayed)\n", s.what, on == off ? "equal" : "DIFFER from",
                static_cast<long long>(replays_on));
  }
}

// An adaptive pattern: while short (all-Full) and long (1/4) requests decode together, steps mix
// patterns and run op by op; once only one pattern's requests are left, its own recording replays.
// Both ways give the tokens of graphs off.
TEST(CudaDecodeGraphCheck, AdaptivePatternGreedyDecodingMatchesGraphsOff) {
  const std::vector<int32_t> prompt_lengths = {245, 70, 130, 1015, 33, 90}, new_tokens = {30, 4, 9, 20, 14, 25};
  int64_t replays_off = 0, replays_on = 0;
  const auto off = Greedy(false, prompt_lengths, new_tokens, &replays_off, nullptr, "200:FSSSFSSS");
  const auto on = Greedy(true, prompt_lengths, new_tokens, &replays_on, nullptr, "200:FSSSFSSS");
  ASSERT_EQ(off.size(), prompt_lengths.size());
  EXPECT_EQ(on, off);
  EXPECT_GT(replays_on, 0) << "no single-pattern step was replayed";
  std::printf("  adaptive pattern: graphs on %s graphs off (%lld steps replayed)\n", on == off ? "equal" : "DIFFER from",
              static_cast<long long>(replays_on));
}

// Logprobs (SamplingParams::logprobs) read each asking row's logits after the step: on a replayed
// step from the graph's own logits buffer. They must equal the op-by-op step's (within the row-scale
// tolerance above), change no token, and agree with an independent pass: ScoreChunks' full logits of
// prompt + tokens (a prefill, other kernels: bf16 rounding apart) put through a float64 log-softmax.
TEST(CudaDecodeGraphCheck, LogprobsAfterAReplayMatchGraphsOffAndAPrefillsLogits) {
  const std::vector<int32_t> prompt_lengths = {245, 70, 130, 33, 90}, new_tokens = {20, 4, 9, 14, 25};
  int64_t replays_off = 0, replays_on = 0, replays_plain = 0;
  std::vector<std::vector<TokenLogprobs>> off_logprobs, on_logprobs;
  const auto off = Greedy(false, prompt_lengths, new_tokens, &replays_off, &off_logprobs);
  const auto on = Greedy(true, prompt_lengths, new_tokens, &replays_on, &on_logprobs);
  const auto plain = Greedy(true, prompt_lengths, new_tokens, &replays_plain);
  EXPECT_EQ(on, plain) << "asking for logprobs changed a token";
  EXPECT_EQ(on, off);
  EXPECT_GT(replays_on, 0);
  double worst_graph = 0, worst_prefill = 0;
  EngineOptions options;
  options.model_dir = kModel;
  options.device = "cuda";
  options.block_size = kBlockSize;
  options.kv_cache_bytes = size_t{256} << 20;
  auto scorer = Engine::Create(options);
  ASSERT_TRUE(scorer.ok()) << scorer.status();
  const int64_t vocab = (*scorer)->config().vocab_size;
  for (size_t r = 0; r < on.size(); ++r) {
    ASSERT_EQ(on_logprobs[r].size(), on[r].size());
    ASSERT_EQ(off_logprobs[r].size(), on[r].size());
    std::vector<int32_t> ids(prompt_lengths[r]);
    for (int32_t p = 0; p < prompt_lengths[r]; ++p) ids[p] = TokenAt(static_cast<int32_t>(r), p);
    ids.insert(ids.end(), on[r].begin(), on[r].end() - 1);
    std::vector<float> logits;
    ASSERT_TRUE((*scorer)
                    ->ScoreChunks(ids, false,
                                  [&](int32_t, const ForwardResult& chunk) {
                                    logits.insert(logits.end(), chunk.logits.begin(), chunk.logits.end());
                                    return absl::OkStatus();
                                  })
                    .ok());
    for (size_t t = 0; t < on[r].size(); ++t) {
      const TokenLogprobs& got = on_logprobs[r][t];
      const TokenLogprobs& eager = off_logprobs[r][t];
      EXPECT_EQ(got.chosen.token, on[r][t]);
      EXPECT_EQ(got.top.front().token, on[r][t]) << "greedy: the chosen token is the most likely";
      worst_graph = std::max(worst_graph, std::abs(double{got.chosen.logprob} - eager.chosen.logprob));
      for (size_t k = 0; k < got.top.size(); ++k) {
        worst_graph = std::max(worst_graph, std::abs(double{got.top[k].logprob} - eager.top[k].logprob));
      }
      const float* row = logits.data() + (static_cast<size_t>(prompt_lengths[r]) - 1 + t) * vocab;
      double max = row[0], sum = 0, scale = 1e-30;
      for (int64_t v = 0; v < vocab; ++v) max = std::max<double>(max, row[v]);
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
      for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::fabs(double{row[v]}));
      const double error = std::abs(got.chosen.logprob - (row[got.chosen.token] - max - std::log(sum)));
      worst_prefill = std::max(worst_prefill, error / scale);
    }
  }
  EXPECT_LE(worst_graph, 1e-3);
  // A prefill runs other kernels on bf16 activations: its logits may differ from the step's by the
  // bf16 bound of cuda_engine_check (5% of the row's scale, max |logit|), and a log-probability,
  // a difference of logits, by twice that.
  EXPECT_LE(worst_prefill, 2 * 5e-2);
  std::printf("  logprobs: graphs on vs off max |diff| %.3g; vs a prefill's logits %.3g of the row scale (%lld steps "
              "replayed)\n",
              worst_graph, worst_prefill, static_cast<long long>(replays_on));
}

}  // namespace
}  // namespace indexcache
