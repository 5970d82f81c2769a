// Sequences of an adaptive pattern's different patterns in one forward pass (mixed_pattern_pass.h),
// checked by what must hold exactly on any backend (below). Used by the CPU invariants and the CUDA
// engine check. Failures are GoogleTest failures.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/engine/engine.h"
#include "common/util/status_macros.h"
#include "gtest/gtest.h"

namespace indexcache::pattern_checks {

// Three sequences of `prompt` tokens in one pass, then one decode token each in a second, sequence s
// running types[s], on a fresh cache of `engine`'s model: both passes' results.
inline absl::StatusOr<std::vector<ForwardResult>> RunPatternBatch(Engine& engine,
                                                                  const std::vector<std::vector<IndexerType>>& types,
                                                                  int32_t prompt) {
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache,
                   PagedKvCache::Create(engine.model().backend(), engine.model().CacheSpec(16), size_t{64} << 20));
  std::vector<ForwardResult> results;
  for (int32_t step = 0; step < 2; ++step) {
    const int32_t begin = step == 0 ? 0 : prompt, end = step == 0 ? prompt : prompt + 1;
    ForwardBatch batch;
    batch.capture_topk = true;
    batch.sequence_indexer_types = types;
    for (int32_t s = 0; s < static_cast<int32_t>(types.size()); ++s) {
      batch.sequences.push_back(s + 1);
      RETURN_IF_ERROR(cache->Reserve(s + 1, end));
      for (int32_t pos = begin; pos < end; ++pos) {
        batch.token_ids.push_back((pos * 131 + s * 977) % (engine.config().vocab_size - 8) + 5);
        batch.positions.push_back(pos);
        batch.token_seq.push_back(s);
        batch.logit_rows.push_back(static_cast<int32_t>(batch.token_ids.size()) - 1);
      }
    }
    ASSIGN_OR_RETURN(ForwardResult r, engine.model().Forward(batch, *cache));
    results.push_back(std::move(r));
  }
  return results;
}

// `engine` serves an adaptive pattern whose base is all-Full (the layers every other pattern loads):
// one sequence per pattern in a mixed pass.
//  - The all-Full sequence's rows run every layer as a uniform all-Full pass runs them — the same
//    products, and at a partial layer the same indexer kernels over a subset of rows — so they must
//    equal that pass's rows bit for bit (this checks the subset's gather, layout and scatter).
//  - Every sequence's selection at a layer its pattern runs Shared must be, exactly, its selection at
//    its pattern's preceding Full layer in the same pass (no scatter may clobber a reused row).
// The other sequences' logits are not compared bit for bit: at a partial layer they take the MLA
// columns of the wider stacked product that Full rows need, which may round differently from the MLA
// product alone; tests/invariants_test.cc checks them against the float64 reference.
inline void ExpectMixedPassKeepsEachPatternsSelections(Engine& engine, int32_t prompt) {
  const std::vector<LengthPattern>& patterns = engine.patterns().patterns();
  ASSERT_EQ(patterns.front().types, engine.config().indexer_types) << "the base must be the loaded (all-Full) pattern";
  const int64_t n = static_cast<int64_t>(patterns.size());
  const int64_t vocab = engine.config().vocab_size;
  std::vector<std::vector<IndexerType>> mixed;
  for (const LengthPattern& p : patterns) mixed.push_back(p.types);
  absl::StatusOr<std::vector<ForwardResult>> got = RunPatternBatch(engine, mixed, prompt);
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<std::vector<ForwardResult>> uniform =
      RunPatternBatch(engine, std::vector<std::vector<IndexerType>>(n, patterns.front().types), prompt);
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  for (size_t step = 0; step < got->size(); ++step) {
    const ForwardResult &m = (*got)[step], &u = (*uniform)[step];
    const int64_t rows = static_cast<int64_t>(m.logits.size()) / vocab / n;  // per sequence
    EXPECT_TRUE(std::equal(m.logits.begin(), m.logits.begin() + rows * vocab, u.logits.begin()))
        << "pass " << step << ": the all-Full sequence's logits";
    for (size_t l = 0; l < m.topk.size(); ++l) {
      EXPECT_TRUE(std::equal(m.topk[l].begin(), m.topk[l].begin() + rows * m.topk_cols, u.topk[l].begin()))
          << "pass " << step << ", layer " << l << ": the all-Full sequence's selections";
    }
    for (int64_t s = 0; s < n; ++s) {
      int32_t source = 0;  // the pattern's last Full layer so far
      for (size_t l = 0; l < m.topk.size(); ++l) {
        if (patterns[s].types[l] == IndexerType::kFull) {
          source = static_cast<int32_t>(l);
          continue;
        }
        const auto first = s * rows * m.topk_cols, last = (s + 1) * rows * m.topk_cols;
        EXPECT_TRUE(std::equal(m.topk[l].begin() + first, m.topk[l].begin() + last, m.topk[source].begin() + first))
            << "pass " << step << ", sequence " << s << ": Shared layer " << l << " lost layer " << source
            << "'s selection";
      }
    }
  }
}

}  // namespace indexcache::pattern_checks
