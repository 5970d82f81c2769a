// PrefillWorkOf against a position-by-position count written out here, on a small config whose
// terms are easy to follow: every layer's work summed over every position computed.
#include "common/model/prefill_cost.h"

#include <algorithm>

#include "gtest/gtest.h"

namespace indexcache {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 64;
  c.num_layers = 4;
  c.num_heads = 4;
  c.q_lora_rank = 32;
  c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.index_n_heads = 2;
  c.index_head_dim = 8;
  c.index_topk = 10;
  c.intermediate_size = 96;
  c.moe_intermediate_size = 24;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.mlp_types = {MlpType::kDense, MlpType::kMoe, MlpType::kMoe, MlpType::kMoe};
  c.indexer_types = {IndexerType::kFull, IndexerType::kShared, IndexerType::kFull, IndexerType::kShared};
  return c;
}

// One position's FLOPs in one layer, each term spelled out.
double PositionFlops(const ModelConfig& c, int32_t layer, int64_t p) {
  const double mla = 64.0 * 32 + 32.0 * 4 * 12 + 64.0 * 20 + 16.0 * 4 * (8 + 8) + 4.0 * 8 * 64;
  const double indexer_weights = 32.0 * 2 * 8 + 64.0 * 8 + 64.0 * 2;
  const double dense = 3.0 * 64 * 96;
  const double moe = 64.0 * 8 + 3.0 * 64 * 24 * (2 + 1);
  const bool full = c.indexer_types[layer] == IndexerType::kFull;
  double flops = 2 * (mla + (full ? indexer_weights : 0) + (c.mlp_types[layer] == MlpType::kMoe ? moe : dense));
  flops += 2.0 * 4 * (20 + 16) * static_cast<double>(std::min<int64_t>(p + 1, 10));  // sparse MLA
  if (full) flops += 2.0 * 2 * 8 * static_cast<double>(p + 1);                       // the indexer
  return flops;
}

double CountedFlops(const ModelConfig& c, int64_t prompt, int64_t cached) {
  double flops = 2.0 * 64 * 1000;  // the last position's logits
  for (int64_t p = cached; p < prompt; ++p) {
    for (int32_t layer = 0; layer < c.num_layers; ++layer) flops += PositionFlops(c, layer, p);
  }
  return flops;
}

TEST(PrefillCostTest, EqualsThePositionByPositionCount) {
  const ModelConfig c = SmallConfig();
  for (const auto& [prompt, cached] : {std::pair<int64_t, int64_t>{1, 0}, {7, 0}, {10, 0}, {11, 0}, {300, 0},
                                       {300, 5}, {300, 10}, {300, 200}, {300, 299}}) {
    EXPECT_DOUBLE_EQ(PrefillWorkOf(c, prompt, cached).total(), CountedFlops(c, prompt, cached))
        << prompt << " tokens, " << cached << " cached";
  }
}

TEST(PrefillCostTest, TheIndexerIsQuadraticAndSharedLayersSkipIt) {
  ModelConfig c = SmallConfig();
  const PrefillWork t = PrefillWorkOf(c, 4096);
  const PrefillWork t2 = PrefillWorkOf(c, 8192);
  EXPECT_NEAR(t2.indexer / t.indexer, 4.0, 0.01);
  EXPECT_NEAR((t2.projections - 2.0 * 64 * 1000) / (t.projections - 2.0 * 64 * 1000), 2.0, 1e-9);
  c.indexer_types = {IndexerType::kFull, IndexerType::kShared, IndexerType::kShared, IndexerType::kShared};
  EXPECT_DOUBLE_EQ(PrefillWorkOf(c, 4096).indexer, t.indexer / 2);  // one Full layer of two
}

TEST(PrefillCostTest, CachedPositionsCostNothing) {
  const ModelConfig c = SmallConfig();
  EXPECT_DOUBLE_EQ(PrefillWorkOf(c, 100, 100).total(), 0.0);
  EXPECT_DOUBLE_EQ(PrefillWorkOf(c, 0).total(), 0.0);
  EXPECT_LT(PrefillWorkOf(c, 1000, 900).total(), PrefillWorkOf(c, 1000).total() / 5);
}

}  // namespace
}  // namespace indexcache
