// Engine::SubmitPrefill with a SegmentSink (the prefill worker's streaming export): every prompt
// position reaches the sink exactly once, in order, one segment per prefill chunk, handed over before
// the pass that computes it; once the pass is over the segment's rows equal what the cache holds at
// the end (an export of the finished prompt, taken separately); and a sink that is not Ready holds
// the request's next chunk back until it is. With the prefix cache, cached positions are streamed
// from the cache, and the rows are those of an engine without it. A decode engine that holds a prompt's
// start in its own prefix cache receives only the rest, and decodes what an engine without any cache
// generates.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "gtest/gtest.h"
#include "tests/engine_steps.h"

namespace indexcache {
namespace {

using engine_steps::DecodeToEnd;
using engine_steps::RunPrefill;

// Three chunks of 16 and one of 2.
constexpr int32_t kPromptTokens = 50;

EngineOptions Options() {
  EngineOptions o;
  o.model_dir = INDEXCACHE_TEST_DATA "/goldens/moe_freq2";
  o.num_threads = 2;
  o.kv_cache_bytes = size_t{4} << 20;
  o.block_size = 16;
  o.max_batch_tokens = 16;
  return o;
}

std::vector<int32_t> Prompt() {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < kPromptTokens; ++i) ids.push_back(3 + (i * 37) % 200);
  return ids;
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = 4;
  return p;
}

class CollectingSink final : public SegmentSink {
 public:
  void Take(KvSegment segment) override { segments.push_back(std::move(segment)); }
  bool Ready() const override { return segments.size() - taken < max_waiting; }

  std::vector<KvSegment> segments;
  size_t taken = 0;  // segments the test has "sent"
  size_t max_waiting = 1000;
};

TEST(EngineExport, StreamsEveryPositionOnceInOrderWithTheCachesRows) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto sink = std::make_shared<CollectingSink>();
  absl::StatusOr<RequestId> id = (*engine)->SubmitPrefill(Prompt(), Greedy(), sink);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(RunPrefill(**engine, *id).steps, 4);

  ASSERT_EQ(sink->segments.size(), 4u);
  const int32_t want_begin[] = {0, 16, 32, 48};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(sink->segments[i].begin(), want_begin[i]);
    EXPECT_EQ(sink->segments[i].end(), i == 3 ? kPromptTokens : want_begin[i] + 16);
    ASSERT_TRUE(sink->segments[i].Wait().ok());
  }

  absl::StatusOr<KvSegment> whole = (*engine)->ExportSegment(*id, 0, kPromptTokens);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_TRUE(whole->Wait().ok());
  // 5 layers, FFSFS: latent rows of all five, index keys of the three Full ones.
  ASSERT_EQ(whole->slices().size(), 8u);
  for (size_t s = 0; s < whole->slices().size(); ++s) {
    std::string streamed;
    for (const KvSegment& segment : sink->segments) {
      ASSERT_EQ(segment.slices().size(), whole->slices().size());
      EXPECT_EQ(segment.slices()[s].layer, whole->slices()[s].layer);
      EXPECT_EQ(segment.slices()[s].kind, whole->slices()[s].kind);
      streamed += segment.bytes(segment.slices()[s]);
    }
    EXPECT_TRUE(streamed == whole->bytes(whole->slices()[s]))
        << "layer " << whole->slices()[s].layer << " kind " << static_cast<int>(whole->slices()[s].kind);
  }
}

TEST(EngineExport, ASinkThatIsNotReadyHoldsTheNextChunkBack) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto sink = std::make_shared<CollectingSink>();
  sink->max_waiting = 1;
  absl::StatusOr<RequestId> id = (*engine)->SubmitPrefill(Prompt(), Greedy(), sink);
  ASSERT_TRUE(id.ok()) << id.status();

  ASSERT_TRUE((*engine)->Step().ok());
  ASSERT_EQ(sink->segments.size(), 1u);
  EXPECT_FALSE((*engine)->HasWork()) << "one segment waits: the request must not compute on";
  ASSERT_TRUE((*engine)->Step().ok());
  EXPECT_EQ(sink->segments.size(), 1u);
  EXPECT_EQ(*(*engine)->CachedTokens(*id), 16);

  sink->taken = 1;  // the first segment went out
  EXPECT_TRUE((*engine)->HasWork());
  ASSERT_TRUE((*engine)->Step().ok());
  EXPECT_EQ(sink->segments.size(), 2u);
  EXPECT_EQ(*(*engine)->CachedTokens(*id), 32);
}

// Every slice's rows of `sink`'s segments, concatenated in position order (after waiting for them).
std::vector<std::string> StreamedRows(const CollectingSink& sink) {
  std::vector<std::string> rows;
  for (const KvSegment& segment : sink.segments) {
    EXPECT_TRUE(segment.Wait().ok());
    rows.resize(segment.slices().size());
    for (size_t s = 0; s < segment.slices().size(); ++s) rows[s] += segment.bytes(segment.slices()[s]);
  }
  return rows;
}

// A prompt whose first three blocks are cached: they reach the sink from the cache, a chunk per step
// and before the computed rest, and the rows equal those an engine without the prefix cache streams.
TEST(EngineExport, CachedPositionsAreStreamedFromTheCacheFirst) {
  EngineOptions cold_options = Options();
  cold_options.prefix_cache = false;
  auto cold = Engine::Create(cold_options);
  ASSERT_TRUE(cold.ok()) << cold.status();
  auto cold_sink = std::make_shared<CollectingSink>();
  absl::StatusOr<RequestId> cold_id = (*cold)->SubmitPrefill(Prompt(), Greedy(), cold_sink);
  ASSERT_TRUE(cold_id.ok()) << cold_id.status();
  ASSERT_EQ(RunPrefill(**cold, *cold_id).steps, 4);

  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::StatusOr<RequestId> first = (*engine)->SubmitPrefill(Prompt(), Greedy(), std::make_shared<CollectingSink>());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(RunPrefill(**engine, *first).steps, 4);
  (*engine)->Release(*first);
  (*engine)->TakeStats();

  auto sink = std::make_shared<CollectingSink>();
  absl::StatusOr<RequestId> id = (*engine)->SubmitPrefill(Prompt(), Greedy(), sink);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(RunPrefill(**engine, *id).steps, 4) << "three steps send the cached blocks, the fourth computes";
  ASSERT_EQ(sink->segments.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(sink->segments[i].begin(), static_cast<int32_t>(16 * i));
    EXPECT_EQ(sink->segments[i].end(), i == 3 ? kPromptTokens : static_cast<int32_t>(16 * i + 16));
  }
  // Of the 50 tokens only the last two went through the model (3 Full layers: one indexer run each).
  EXPECT_EQ((*engine)->TakeStats().indexer_runs, 2u * 3);
  EXPECT_EQ((*engine)->TakePrefixCacheStats().hit_tokens, 48u);
  EXPECT_TRUE(StreamedRows(*sink) == StreamedRows(*cold_sink)) << "rows differ from the cold engine's";
}

// Imports every row of the sink's segments into `decode`'s request `id`, verifies the prefill side's
// probes and starts decoding with its first token; then steps until the request ends. Its tokens.
std::vector<int32_t> ImportAndDecode(Engine& prefill, RequestId prefill_id, const CollectingSink& sink,
                                     int32_t first_token, Engine& decode, RequestId id) {
  std::vector<int32_t> tokens;
  for (const KvSegment& segment : sink.segments) {
    EXPECT_TRUE(segment.Wait().ok());
    for (const KvSlice& slice : segment.slices()) {
      auto bytes = std::make_shared<std::string>(segment.bytes(slice));
      const absl::Status imported = decode.ImportRows(id, slice.layer, slice.kind, segment.begin(), segment.count(),
                                                      LandedRows{bytes->data(), bytes->size(), bytes});
      EXPECT_TRUE(imported.ok()) << imported;
    }
  }
  absl::StatusOr<std::vector<IndexerProbe>> probes = prefill.TakeProbes(prefill_id);
  EXPECT_TRUE(probes.ok()) << probes.status();
  if (!probes.ok()) return tokens;
  const absl::Status verified = decode.VerifyProbes(id, *probes);
  EXPECT_TRUE(verified.ok()) << verified;
  absl::StatusOr<TokenEvent> started = decode.StartDecode(id, first_token);
  EXPECT_TRUE(started.ok()) << started.status();
  if (!started.ok()) return tokens;
  tokens.push_back(started->token);
  const std::vector<int32_t> rest = DecodeToEnd(decode, id);
  tokens.insert(tokens.end(), rest.begin(), rest.end());
  return tokens;
}

TEST(EngineExport, ADecodeEngineHoldingThePromptsStartReceivesOnlyTheRest) {
  auto prefill = Engine::Create(Options());
  auto decode = Engine::Create(Options());
  EngineOptions cold_options = Options();
  cold_options.prefix_cache = false;
  auto cold = Engine::Create(cold_options);
  ASSERT_TRUE(prefill.ok() && decode.ok() && cold.ok());
  SamplingParams params = Greedy();
  params.ignore_eos = true;

  // Turn 1: the whole 50-token prompt travels; the decode engine keeps its 3 full blocks.
  const std::vector<int32_t> first_prompt = Prompt();
  auto first_sink = std::make_shared<CollectingSink>();
  absl::StatusOr<RequestId> p1 = (*prefill)->SubmitPrefill(first_prompt, params, first_sink);
  ASSERT_TRUE(p1.ok()) << p1.status();
  const int32_t first_token = RunPrefill(**prefill, *p1).first_token;
  absl::StatusOr<RequestId> d1 = (*decode)->AdmitImport(first_prompt, params);
  ASSERT_TRUE(d1.ok()) << d1.status();
  EXPECT_EQ(*(*decode)->CachedTokens(*d1), 0);
  const std::vector<int32_t> first_output = ImportAndDecode(**prefill, *p1, *first_sink, first_token, **decode, *d1);
  (*prefill)->Release(*p1);

  // Turn 2: the conversation so far and 20 new tokens. The decode engine holds the first 48 positions
  // (the first prompt's full blocks; the generated tokens' rows, a decode step's, are not published).
  std::vector<int32_t> second_prompt = first_prompt;
  second_prompt.insert(second_prompt.end(), first_output.begin(), first_output.end());
  for (int32_t i = 0; i < 20; ++i) second_prompt.push_back(7 + (i * 13) % 190);
  absl::StatusOr<RequestId> d2 = (*decode)->AdmitImport(second_prompt, params);
  ASSERT_TRUE(d2.ok()) << d2.status();
  const int32_t held = *(*decode)->CachedTokens(*d2);
  EXPECT_EQ(held, 48);
  auto second_sink = std::make_shared<CollectingSink>();
  absl::StatusOr<RequestId> p2 = (*prefill)->SubmitPrefill(second_prompt, params, second_sink, held);
  ASSERT_TRUE(p2.ok()) << p2.status();
  const int32_t second_first = RunPrefill(**prefill, *p2).first_token;
  ASSERT_FALSE(second_sink->segments.empty());
  EXPECT_EQ(second_sink->segments.front().begin(), held) << "rows the decode engine holds were sent";
  EXPECT_EQ(second_sink->segments.back().end(), static_cast<int32_t>(second_prompt.size()));
  // A row of the held prefix would overwrite shared blocks: refused.
  const KvSegment& some = second_sink->segments.front();
  ASSERT_TRUE(some.Wait().ok());
  auto bytes = std::make_shared<std::string>(some.bytes(some.slices()[0]));
  EXPECT_EQ((*decode)
                ->ImportRows(*d2, some.slices()[0].layer, some.slices()[0].kind, held - 16, 16,
                             LandedRows{bytes->data(), bytes->size(), bytes})
                .code(),
            absl::StatusCode::kFailedPrecondition);
  const std::vector<int32_t> second_output =
      ImportAndDecode(**prefill, *p2, *second_sink, second_first, **decode, *d2);

  // The truth: an engine without any cache generating from the whole second prompt.
  absl::StatusOr<RequestId> truth = (*cold)->Submit(second_prompt, params);
  ASSERT_TRUE(truth.ok()) << truth.status();
  EXPECT_EQ(second_output, DecodeToEnd(**cold, *truth));
  // An export that would skip the prompt's last position is refused.
  EXPECT_EQ((*prefill)->SubmitPrefill(second_prompt, params, nullptr, static_cast<int32_t>(second_prompt.size())).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace indexcache
