// The cluster TTFT benchmark's report (cluster_ttft_bench.cc writes the JSON it reads): per case the
// medians over the successful timed repetitions, TTFT / engine prefill, the handoff's bytes against
// the analytic bf16 rows and its wire rate against the loopback TCP ceiling; the bursts' percentiles
// and failures. Issue 12's targets are printed beside the numbers they judge.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace indexcache::bench {

// Adds "summary" to every entry of report["cases"]: engine_s, ttft_s, prefill_s, handoff_s, queue_s
// (medians), ttft_over_engine, sent/received bytes of the first timed repetition, bytes_exact
// (latent and index-key bytes equal the expected bf16 rows), wire_bytes_per_second (sent bytes /
// handoff_s) and its fraction of the loopback TCP ceiling.
void SummarizeCases(nlohmann::json& report);

// Markdown tables of a summarized report.
std::string TtftMarkdown(const nlohmann::json& report);

}  // namespace indexcache::bench
