// The router's estimate of a worker's room (services/router/worker_capacity.h): the ledger on top of
// the last report, the peak rule that keeps a finished request from counting as someone else's, and
// the now / later / never verdicts.
#include "services/router/worker_capacity.h"

#include <string>

#include "common/model/model_config.h"
#include "common/model/prefill_cost.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

v1::WorkerLoad DecodeLoad(int32_t free_blocks, int32_t total_blocks = 10, int32_t block_size = 16) {
  v1::WorkerLoad load;
  load.set_role(v1::DECODE);
  load.set_kv_block_size(block_size);
  load.set_free_kv_blocks(free_blocks);
  load.set_total_kv_blocks(total_blocks);
  return load;
}

v1::WorkerLoad PrefillLoad(int64_t queued, int64_t bound) {
  v1::WorkerLoad load;
  load.set_role(v1::PREFILL);
  load.set_queued_prompt_tokens(queued);
  load.set_max_queued_prompt_tokens(bound);
  return load;
}

TEST(WorkerCapacityTest, DecodePromisesThePromptsBlocksAndRefusesWhatNeverFits) {
  const v1::WorkerLoad load = DecodeLoad(10);
  WorkerLedger ledger;
  // 40 prompt tokens + 1: 3 blocks of 16 reserved at admission.
  const Demand demand{40, 8};
  EXPECT_EQ(KvBlocksToAdmit(load, demand), 3);
  EXPECT_EQ(DecodeFit(load, ledger, demand).fit, Fit::kNow);
  ledger.Enter({.kv_blocks = 3, .sequences = 1});
  ledger.Enter({.kv_blocks = 3, .sequences = 1});
  ledger.Enter({.kv_blocks = 3, .sequences = 1});
  const FitVerdict full = DecodeFit(load, ledger, demand);
  EXPECT_EQ(full.fit, Fit::kLater);
  EXPECT_THAT(full.why, HasSubstr("1 of its 10 KV blocks are free, 3 needed"));
  ledger.Leave({.kv_blocks = 3, .sequences = 1});
  EXPECT_EQ(DecodeFit(load, ledger, demand).fit, Fit::kNow);
  // 160 tokens fill the 10 blocks exactly; one more never fits, however idle the worker.
  EXPECT_EQ(DecodeFit(load, WorkerLedger(), Demand{100, 60}).fit, Fit::kNow);
  const FitVerdict never = DecodeFit(load, WorkerLedger(), Demand{100, 61});
  EXPECT_EQ(never.fit, Fit::kNever);
  EXPECT_THAT(never.why, HasSubstr("161 tokens"));
  EXPECT_THAT(never.why, HasSubstr("160 tokens"));
}

TEST(WorkerCapacityTest, AReportAddsOnlyWhatLiesBeyondTheRoutersOwnRequests) {
  WorkerLedger ledger;
  ledger.Enter({.kv_blocks = 3, .sequences = 1});  // ours, admitted there
  ledger.Reported(DecodeLoad(/*free_blocks=*/5));  // 5 in use: 3 ours, 2 someone else's
  EXPECT_EQ(ledger.others_kv_blocks, 2);
  EXPECT_EQ(DecodeFit(DecodeLoad(5), ledger, Demand{40, 8}).fit, Fit::kNow);  // 10 - 5 = 5 free
  ledger.Enter({.kv_blocks = 3, .sequences = 1});
  EXPECT_EQ(DecodeFit(DecodeLoad(5), ledger, Demand{40, 8}).fit, Fit::kLater);  // 2 free
}

TEST(WorkerCapacityTest, ARequestThatFinishedWhileTheReportTravelledIsNotCountedTwice) {
  WorkerLedger ledger;
  ledger.Enter({.prompt_tokens = 30});
  ledger.Reported(PrefillLoad(30, 40));
  // The worker builds its next report with our 30 tokens in it; they finish before it arrives.
  ledger.Leave({.prompt_tokens = 30});
  ledger.Reported(PrefillLoad(30, 40));
  EXPECT_EQ(ledger.others_prompt_tokens, 0);
  EXPECT_EQ(PrefillFit(PrefillLoad(30, 40), ledger, Demand{30, 1}).fit, Fit::kNow);
  // The report after that has it right: nobody else's tokens.
  ledger.Reported(PrefillLoad(0, 40));
  EXPECT_EQ(ledger.others_prompt_tokens, 0);
  // Someone else's 25 tokens show.
  ledger.Reported(PrefillLoad(25, 40));
  EXPECT_EQ(ledger.others_prompt_tokens, 25);
}

// Prefill workers are compared by queued work, not tokens: one 64K prompt is far more indexer work
// than four 16K ones of the same total (common/model/prefill_cost.h), and the other routers' work
// comes from the report the way their tokens do.
TEST(WorkerCapacityTest, APrefillWorkersLoadIsItsQueuedWork) {
  const ModelConfig config = *LoadModelConfig(std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained");
  const auto flops = [&](int64_t tokens) { return static_cast<int64_t>(PrefillWorkOf(config, tokens).total()); };
  WorkerLedger one_long, four_short;
  one_long.Enter({.prompt_tokens = 65536, .prefill_flops = flops(65536)});
  for (int i = 0; i < 4; ++i) four_short.Enter({.prompt_tokens = 16384, .prefill_flops = flops(16384)});
  EXPECT_EQ(PrefillLoadKey(one_long).secondary, PrefillLoadKey(four_short).secondary);  // the same tokens
  EXPECT_LT(PrefillLoadKey(four_short), PrefillLoadKey(one_long));

  v1::WorkerLoad report = PrefillLoad(65536 + 1000, 0);
  report.set_queued_prefill_flops(static_cast<double>(flops(65536) + 5000));
  one_long.Reported(report);
  EXPECT_EQ(one_long.others_prefill_flops, 5000);
  one_long.Leave({.prompt_tokens = 65536, .prefill_flops = flops(65536)});
  EXPECT_EQ(PrefillLoadKey(one_long).primary, 5000);
}

// Two decode workers, one just done with a spell of five of this router's streams: a report built
// before they ended still says five run there. Only sequences beyond the router's own count, so a
// burst now spreads over both instead of landing on the other one until it has five too.
TEST(WorkerCapacityTest, ADecodeWorkersLoadCountsOnlyTheSequencesBeyondTheRoutersOwn) {
  v1::WorkerLoad busy = DecodeLoad(/*free_blocks=*/10, /*total_blocks=*/20);
  busy.set_running_sequences(5);
  WorkerLedger was_busy;
  for (int i = 0; i < 5; ++i) was_busy.Enter({.kv_blocks = 2, .sequences = 1});
  was_busy.Reported(busy);
  for (int i = 0; i < 5; ++i) was_busy.Leave({.kv_blocks = 2, .sequences = 1});
  was_busy.Reported(busy);  // built while they still ran
  EXPECT_EQ(was_busy.others_sequences, 0);
  const v1::WorkerLoad idle_load = DecodeLoad(20, 20);
  const WorkerLedger idle;
  EXPECT_EQ(DecodeLoadKey(busy, was_busy).primary, 0);
  EXPECT_FALSE(DecodeLoadKey(idle_load, idle) < DecodeLoadKey(busy, was_busy))
      << "the idle worker is not preferred for sequences that have ended";
  // Our next request there counts at once; someone else's three show from the next report on.
  was_busy.Enter({.kv_blocks = 2, .sequences = 1});
  EXPECT_EQ(DecodeLoadKey(busy, was_busy).primary, 1);
  v1::WorkerLoad others = DecodeLoad(12, 20);
  others.set_running_sequences(4);  // ours and three more
  was_busy.Reported(others);
  EXPECT_EQ(was_busy.others_sequences, 3);
  EXPECT_EQ(DecodeLoadKey(others, was_busy).primary, 4);
}

TEST(WorkerCapacityTest, PrefillKeepsItsBoundButTakesAnyPromptWhenIdle) {
  WorkerLedger ledger;
  const v1::WorkerLoad load = PrefillLoad(0, 100);
  EXPECT_EQ(PrefillFit(load, ledger, Demand{500, 1}).fit, Fit::kNow);  // idle: as PrefillService admits
  ledger.Enter({.prompt_tokens = 60});
  EXPECT_EQ(PrefillFit(load, ledger, Demand{40, 1}).fit, Fit::kNow);
  const FitVerdict later = PrefillFit(load, ledger, Demand{41, 1});
  EXPECT_EQ(later.fit, Fit::kLater);
  EXPECT_THAT(later.why, HasSubstr("60 prompt tokens are queued"));
  // No bound reported: not gated.
  EXPECT_EQ(PrefillFit(PrefillLoad(0, 0), ledger, Demand{1000, 1}).fit, Fit::kNow);
  // A prompt larger than its whole KV cache never fits.
  v1::WorkerLoad small_cache = PrefillLoad(0, 100);
  small_cache.set_kv_block_size(16);
  small_cache.set_total_kv_blocks(4);
  EXPECT_EQ(PrefillFit(small_cache, WorkerLedger(), Demand{64, 1}).fit, Fit::kNow);
  EXPECT_EQ(PrefillFit(small_cache, WorkerLedger(), Demand{65, 1}).fit, Fit::kNever);
}

TEST(WorkerCapacityTest, ARefusalHoldsTheWorkerBackUntilItsNextReport) {
  WorkerLedger ledger;
  ledger.refused = true;
  EXPECT_EQ(DecodeFit(DecodeLoad(10), ledger, Demand{4, 4}).fit, Fit::kLater);
  EXPECT_EQ(PrefillFit(PrefillLoad(0, 100), ledger, Demand{4, 4}).fit, Fit::kLater);
  ledger.Reported(DecodeLoad(10));
  EXPECT_EQ(DecodeFit(DecodeLoad(10), ledger, Demand{4, 4}).fit, Fit::kNow);
}

TEST(WorkerCapacityTest, AWorkerReportingNoBlockSizeIsNotGated) {
  v1::WorkerLoad load = DecodeLoad(0, 10, /*block_size=*/0);
  EXPECT_EQ(DecodeFit(load, WorkerLedger(), Demand{10000, 10000}).fit, Fit::kNow);
  EXPECT_EQ(KvBlocksToAdmit(load, Demand{100, 1}), 0);
}

}  // namespace
}  // namespace indexcache
