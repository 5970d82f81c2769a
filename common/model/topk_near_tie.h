// Whether two top-k selections of one indexer query differ only where scores tie within rounding.
//
// The handoff integrity check re-runs the last position's indexer on the decode worker over the
// received index keys and compares its top-k with the prefill worker's. The two sides compute the
// same scores in different kernels (a prefill chunk's GEMM against one query's), so scores that tie
// to within rounding may order differently and swap a key at the k-th place: 127 of 128 keys agree,
// the rows are intact. This tells that from a corrupted handoff: every key one side selected and the
// other did not must score within the rounding reach of the k-th largest score, computed here in
// double from the same operands.
//
// Rounding reach: score(t) = Σ_h w_h · ReLU(Σ_d q_hd · k_td). A backend may round the query to bf16
// before the products (relative error 2^-8 per term, the CUDA indexer's tensor-core operands), and
// either side may, so two evaluations differ by at most 2 · 2^-8 · Σ_h |w_h| Σ_d |q_hd · k_td| plus
// float accumulation error, which is far smaller. Differences beyond that are not rounding.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/model/indexer_probe.h"

namespace indexcache {

// `keys`: the layer's index keys of positions [0, n), row-major [n, index_head_dim] as floats;
// `probe.topk` one side's selection, `recomputed` the other's (same size, positions < n). OK when they
// differ only at near-ties; DATA_LOSS naming the first key that is not one.
absl::Status CheckTopKDifferenceIsNearTie(const IndexerProbe& probe, absl::Span<const float> keys, int32_t heads,
                                          int32_t head_dim, absl::Span<const int32_t> recomputed);

}  // namespace indexcache
