// Tensor- and expert-parallel sharding (common/model/model_shard.h) on the CPU backend, ranks as
// threads over the in-process communicator: every rank of a sharded group must compute the model's
// result — the float64 reference's logits and top-k selections (tests/reference/naive_dsa.h), as the
// single-rank engine does — through a prefill pass of two sequences and a decode step, for TP 2 and 4,
// EP 2 and 4 and both together, on the goldens' models (dense, MoE with a shared expert, IndexCache
// patterns). Every rank holds the same bits (the all-reduce adds in rank order), and the single rank's
// logits agree with the sharded ones within float reassociation. Bad shards are refused.
#include <cmath>
#include <ostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/backend/backend.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "common/parallel/communicator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/reference/naive_dsa.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";
constexpr double kTol = 1e-4;  // logits against the float64 reference, relative to the row's largest |logit|
constexpr int32_t kPrompt = 40;  // past the goldens' index_topk (12): the selections choose

struct ParallelCase {
  std::string model;
  int32_t size = 1;
  bool tensor_parallel = false;
  bool expert_parallel = false;
};

void PrintTo(const ParallelCase& c, std::ostream* os) {
  *os << c.model << " on " << c.size << " ranks" << (c.tensor_parallel ? ", tensor parallel" : "")
      << (c.expert_parallel ? ", expert parallel" : "");
}

std::string CaseName(const ::testing::TestParamInfo<ParallelCase>& info) {
  const ParallelCase& c = info.param;
  return c.model + (c.tensor_parallel ? absl::StrCat("_tp", c.size) : "") + (c.expert_parallel ? absl::StrCat("_ep", c.size) : "");
}

std::vector<int32_t> Ids(int32_t n, int32_t vocab, int32_t salt) {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < n; ++i) ids.push_back((i * 37 + salt * 101 + (i * i) % 13) % (vocab - 2) + 1);
  return ids;
}

// What one rank computed: per pass, the logits and every layer's selection.
struct RankRun {
  absl::Status status;
  std::vector<ForwardResult> passes;
};

// Two sequences: a pass over both prompts, then a decode step of one token each.
std::vector<ForwardBatch> Batches(const std::vector<std::vector<int32_t>>& ids) {
  std::vector<ForwardBatch> batches(2);
  for (int32_t step = 0; step < 2; ++step) {
    ForwardBatch& b = batches[step];
    b.capture_topk = true;
    for (int32_t s = 0; s < static_cast<int32_t>(ids.size()); ++s) {
      b.sequences.push_back(s + 1);
      const int32_t begin = step == 0 ? 0 : kPrompt, end = step == 0 ? kPrompt : kPrompt + 1;
      for (int32_t pos = begin; pos < end; ++pos) {
        b.token_ids.push_back(ids[s][pos]);
        b.positions.push_back(pos);
        b.token_seq.push_back(s);
        b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
      }
    }
  }
  return batches;
}

// Loads `shard` of `model_dir` on a backend of its own and runs `batches` on a cache of its own.
RankRun RunRank(const std::string& model_dir, const ModelShard& shard, Communicator* group,
                const std::vector<ForwardBatch>& batches) {
  RankRun run;
  run.status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend("cpu", /*num_threads=*/1));
    ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
    ModelLoadOptions options;
    options.shard = shard;
    ASSIGN_OR_RETURN(std::unique_ptr<DsaModel> model, DsaModel::Load(model_dir, config, backend.get(), options, group));
    ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache,
                     PagedKvCache::Create(backend.get(), model->CacheSpec(16), size_t{8} << 20));
    for (const ForwardBatch& b : batches) {
      for (SequenceId seq : b.sequences) RETURN_IF_ERROR(cache->Reserve(seq, kPrompt + 1));
      ASSIGN_OR_RETURN(ForwardResult r, model->Forward(b, *cache));
      run.passes.push_back(std::move(r));
    }
    return absl::OkStatus();
  }();
  return run;
}

double RowError(const float* got, const double* want, int64_t vocab) {
  double scale = 1e-6, worst = 0.0;
  for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::abs(want[v]));
  for (int64_t v = 0; v < vocab; ++v) worst = std::max(worst, std::abs(got[v] - want[v]) / scale);
  return worst;
}

class TensorParallelTest : public ::testing::TestWithParam<ParallelCase> {};

TEST_P(TensorParallelTest, EveryRankComputesTheModelsResult) {
  const ParallelCase& p = GetParam();
  const std::string dir = kGoldens + p.model;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  const int64_t vocab = config->vocab_size;
  const std::vector<std::vector<int32_t>> ids = {Ids(kPrompt + 1, config->vocab_size, 1),
                                                 Ids(kPrompt + 1, config->vocab_size, 2)};
  const std::vector<ForwardBatch> batches = Batches(ids);

  const RankRun single = RunRank(dir, ModelShard{}, nullptr, batches);
  ASSERT_TRUE(single.status.ok()) << single.status;
  std::vector<std::unique_ptr<Communicator>> group = MakeInProcessGroup(p.size);
  std::vector<RankRun> ranks(p.size);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < p.size; ++r) {
    threads.emplace_back([&, r] {
      ranks[r] = RunRank(dir, ModelShard{r, p.size, p.tensor_parallel, p.expert_parallel}, group[r].get(), batches);
    });
  }
  for (std::thread& t : threads) t.join();

  absl::StatusOr<reference::NaiveDsa> ref = reference::NaiveDsa::Load(dir);
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::vector<reference::NaiveDsaResult> want;
  for (const auto& seq : ids) {
    absl::StatusOr<reference::NaiveDsaResult> r = ref->Forward(seq);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->moe_near_ties, 0) << "a near-tie routing decision makes the logits incomparable";
    // The comparison must cover the decode step: no near-tie selection before it.
    EXPECT_EQ(r->first_near_tie_row(), r->seq_len) << "these inputs leave a near-tie: pick others";
    want.push_back(*std::move(r));
  }
  for (int32_t r = 0; r < p.size; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    ASSERT_TRUE(ranks[r].status.ok()) << ranks[r].status;
    for (size_t pass = 0; pass < batches.size(); ++pass) {
      const ForwardBatch& b = batches[pass];
      const ForwardResult& got = ranks[r].passes[pass];
      // Every rank the same bits; the single rank within float reassociation of the sharded sums.
      EXPECT_EQ(got.logits, ranks[0].passes[pass].logits) << "pass " << pass;
      for (size_t row = 0; row < b.token_ids.size(); ++row) {
        const int32_t s = b.token_seq[row], t = b.positions[row];
        const reference::NaiveDsaResult& w = want[s];
        if (t >= w.first_near_tie_row()) continue;  // after a near-tie selection either key may be taken
        ASSERT_LE(RowError(got.logits.data() + row * vocab, w.row(t), vocab), kTol)
            << "pass " << pass << " sequence " << s << " position " << t;
        double single_error = 0.0, scale = 1e-6;
        for (int64_t v = 0; v < vocab; ++v) scale = std::max<double>(scale, std::abs(single.passes[pass].logits[row * vocab + v]));
        for (int64_t v = 0; v < vocab; ++v) {
          single_error = std::max<double>(single_error, std::abs(got.logits[row * vocab + v] -
                                                                 single.passes[pass].logits[row * vocab + v]));
        }
        EXPECT_LE(single_error / scale, 1e-5) << "against the single rank, pass " << pass << " row " << row;
        for (size_t l = 0; l < got.topk.size(); ++l) {
          if (w.layers[l].near_tie[t]) continue;
          const auto first = got.topk[l].begin() + static_cast<int64_t>(row) * got.topk_cols;
          const std::set<int32_t> selected(first, std::find(first, first + got.topk_cols, -1));
          ASSERT_EQ(selected, w.layers[l].selected[t]) << "pass " << pass << " sequence " << s << " layer " << l;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Goldens, TensorParallelTest,
    ::testing::Values(ParallelCase{"dense_allfull", 2, true, false}, ParallelCase{"dense_allfull", 4, true, false},
                      ParallelCase{"moe_freq2", 2, true, false}, ParallelCase{"moe_freq2", 4, true, false},
                      ParallelCase{"moe_freq2", 2, false, true}, ParallelCase{"moe_freq2", 4, false, true},
                      ParallelCase{"moe_pattern", 2, true, true}, ParallelCase{"moe_pattern", 4, true, true}),
    CaseName);

TEST(TensorParallelShards, UnevenSplitsAndBadRanksAreRefused) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(kGoldens + "moe_freq2");  // 4 heads, 8 experts
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(ValidateShard(*config, ModelShard{0, 3, true, false}).message(), HasSubstr("attention heads (4)"));
  EXPECT_THAT(ValidateShard(*config, ModelShard{0, 3, false, true}).message(), HasSubstr("routed experts (8)"));
  EXPECT_THAT(ValidateShard(*config, ModelShard{2, 2, true, false}).message(), HasSubstr("rank 2 of a group of 2"));
  EXPECT_TRUE(ValidateShard(*config, ModelShard{1, 8, false, true}).ok());
  // A sharded load without its rank's communicator is refused before any weight is read.
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok());
  ModelLoadOptions options;
  options.shard = ModelShard{0, 2, true, false};
  absl::StatusOr<std::unique_ptr<DsaModel>> model =
      DsaModel::Load(kGoldens + "moe_freq2", *config, backend->get(), options, nullptr);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace indexcache
