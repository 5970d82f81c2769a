#include "bench/bench_report.h"

#include <omp.h>

#include <algorithm>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace indexcache::bench {
namespace {

nlohmann::json SampleJson(const Sample& s) {
  return {{"median_s", s.median}, {"min_s", s.min}, {"max_s", s.max}, {"reps", s.reps}};
}

nlohmann::json CostJson(const ForwardCost& c) {
  return {{"flops", c.flops()},
          {"projection_flops", c.projection_flops},
          {"indexer_flops", c.indexer_flops},
          {"attention_flops", c.attention_flops},
          {"ffn_flops", c.ffn_flops},
          {"lm_head_flops", c.lm_head_flops},
          {"weight_bytes", c.weight_bytes},
          {"cache_bytes", c.cache_bytes}};
}

nlohmann::json SharesJson(const RegionShares& s) {
  return {{"indexer", s.indexer}, {"attention", s.attention}, {"moe", s.moe}};
}

std::string Pct(double share) { return absl::StrFormat("%.1f%%", 100.0 * share); }

// The larger of the two floors (FLOPs at the best sgemm rate, bytes at the copy bandwidth).
struct Floor {
  double compute_s = 0.0, memory_s = 0.0;
  double seconds() const { return std::max(compute_s, memory_s); }
  const char* bound() const { return compute_s >= memory_s ? "FLOPs" : "bytes"; }
};

Floor FloorOf(const ForwardCost& cost, const MachineCeilings& m) {
  return {cost.flops() / (m.best_gemm_gflops * 1e9), cost.bytes() / (m.copy_gbps * 1e9)};
}

const PrefillResult* FindPrefill(const PatternResults& p, int32_t length) {
  for (const PrefillResult& r : p.prefill) {
    if (r.prompt_len == length) return &r;
  }
  return nullptr;
}

// Amdahl on the indexer: the baseline's non-indexer time stays, its indexer time scales with the
// number of Full layers. What IndexCache should give if nothing else changed.
double PredictedSpeedup(double base_indexer_share, const std::string& base_layers, const std::string& layers) {
  const double base_full = std::count(base_layers.begin(), base_layers.end(), 'F');
  const double full = std::count(layers.begin(), layers.end(), 'F');
  if (base_full == 0) return 1.0;
  return 1.0 / ((1.0 - base_indexer_share) + base_indexer_share * full / base_full);
}

const DecodeResult* FindDecode(const PatternResults& p, int32_t batch, int32_t context) {
  for (const DecodeResult& r : p.decode) {
    if (r.batch == batch && r.context == context) return &r;
  }
  return nullptr;
}

}  // namespace

nlohmann::json ReportJson(const RunInfo& info, const MachineCeilings& m, const ModelConfig& c,
                          const std::vector<PatternResults>& patterns) {
  nlohmann::json j;
  j["run"] = {{"date", info.date},
              {"cpu_model", info.cpu_model},
              {"logical_cores", info.logical_cores},
              {"threads", m.threads},
              {"git_commit", info.git_commit},
              {"command_line", info.command_line},
              {"omp_wait_policy", info.omp_wait_policy},
              {"loadavg_before", info.load_before},
              {"loadavg_after", info.load_after},
              {"model_dir", info.model_dir},
              {"max_batch_tokens", info.max_batch_tokens},
              {"total_seconds", info.total_seconds}};
  j["model"] = {{"layers", c.num_layers},        {"hidden", c.hidden_size},
                {"heads", c.num_heads},          {"q_lora", c.q_lora_rank},
                {"kv_lora", c.kv_lora_rank},     {"index_heads", c.index_n_heads},
                {"index_dim", c.index_head_dim}, {"index_topk", c.index_topk},
                {"experts", c.n_routed_experts}, {"experts_per_token", c.num_experts_per_tok},
                {"vocab", c.vocab_size},         {"all_weight_bytes_f32", AllWeightBytes(c)}};
  nlohmann::json gemms = nlohmann::json::array();
  for (const GemmRate& g : m.gemms) {
    gemms.push_back({{"label", g.shape.label},
                     {"m", g.shape.m},
                     {"n", g.shape.n},
                     {"k", g.shape.k},
                     {"time", SampleJson(g.sample)},
                     {"gflops", g.gflops}});
  }
  j["ceilings"] = {{"blas", m.blas},
                   {"sgemm", gemms},
                   {"best_sgemm_gflops", m.best_gemm_gflops},
                   {"copy_gbps", m.copy_gbps},
                   {"copy_time", SampleJson(m.copy)},
                   {"cache_copy_gbps", m.cache_copy_gbps},
                   {"cache_copy_time", SampleJson(m.cache_copy)},
                   {"omp_fork_join_us", m.omp_fork_join_us}};
  nlohmann::json out = nlohmann::json::array();
  for (const PatternResults& p : patterns) {
    nlohmann::json pj = {{"name", p.spec.name}, {"layers", p.layers}};
    for (const PrefillResult& r : p.prefill) {
      const Floor f = FloorOf(r.cost, m);
      pj["prefill"].push_back({{"prompt_len", r.prompt_len},
                               {"time", SampleJson(r.seconds)},
                               {"tokens_per_s", r.tokens_per_s},
                               {"gflops", r.gflops},
                               {"fraction_of_sgemm_ceiling", r.gflops / m.best_gemm_gflops},
                               {"cost", CostJson(r.cost)},
                               {"shares", SharesJson(r.shares)},
                               {"engine_indexer_flops", r.engine_indexer_flops},
                               {"floor_s", f.seconds()},
                               {"floor_bound", f.bound()}});
    }
    for (const DecodeResult& r : p.decode) {
      const Floor f = FloorOf(r.cost, m);
      pj["decode"].push_back({{"batch", r.batch},
                              {"context", r.context},
                              {"mean_position", r.mean_position},
                              {"step_time", SampleJson(r.step_seconds)},
                              {"tokens_per_s", r.tokens_per_s},
                              {"gflops", r.gflops},
                              {"cost_per_step", CostJson(r.cost)},
                              {"shares", SharesJson(r.shares)},
                              {"floor_s", f.seconds()},
                              {"floor_bound", f.bound()}});
    }
    out.push_back(pj);
  }
  j["patterns"] = out;
  // Speedups of every pattern over the first (the baseline), measured and predicted.
  nlohmann::json speedups = nlohmann::json::array();
  for (size_t i = 1; i < patterns.size(); ++i) {
    const PatternResults& base = patterns.front();
    const PatternResults& p = patterns[i];
    for (const PrefillResult& r : p.prefill) {
      if (const PrefillResult* b = FindPrefill(base, r.prompt_len)) {
        speedups.push_back({{"pattern", p.spec.name},
                            {"phase", "prefill"},
                            {"prompt_len", r.prompt_len},
                            {"speedup", b->seconds.median / r.seconds.median},
                            {"predicted", PredictedSpeedup(b->shares.indexer, base.layers, p.layers)}});
      }
    }
    for (const DecodeResult& r : p.decode) {
      if (const DecodeResult* b = FindDecode(base, r.batch, r.context)) {
        speedups.push_back({{"pattern", p.spec.name},
                            {"phase", "decode"},
                            {"batch", r.batch},
                            {"context", r.context},
                            {"speedup", b->step_seconds.median / r.step_seconds.median},
                            {"predicted", PredictedSpeedup(b->shares.indexer, base.layers, p.layers)}});
      }
    }
  }
  j["speedups"] = speedups;
  return j;
}

std::string ReportMarkdown(const RunInfo& info, const MachineCeilings& m, const ModelConfig& c,
                           const std::vector<PatternResults>& patterns) {
  std::string md;
  absl::StrAppendFormat(&md, "# CPU benchmark: %s\n\n", info.model_dir);
  absl::StrAppendFormat(&md,
                        "- date: %s\n- CPU: %s, %d logical cores, %d OpenMP threads\n- BLAS: %s\n"
                        "- git commit: `%s`\n- command: `%s`\n- OMP_WAIT_POLICY: %s\n"
                        "- load average before / after: `%s` / `%s`\n- wall time of the whole run: %.1f s\n"
                        "- prefill chunk (max_batch_tokens): %d; F32 weights in all: %.1f MB\n\n",
                        info.date, info.cpu_model, info.logical_cores, m.threads, m.blas, info.git_commit,
                        info.command_line, info.omp_wait_policy.empty() ? "(unset)" : info.omp_wait_policy,
                        info.load_before, info.load_after, info.total_seconds, info.max_batch_tokens,
                        AllWeightBytes(c) * 1e-6);

  md += "## Machine ceilings (same process, same threads)\n\n| measurement | median | rate |\n| --- | --- | --- |\n";
  for (const GemmRate& g : m.gemms) {
    absl::StrAppendFormat(&md, "| sgemm %s | %.3f ms | %.1f GFLOP/s |\n", g.shape.label, g.sample.median * 1e3,
                          g.gflops);
  }
  absl::StrAppendFormat(&md, "| memcpy 256 MiB (read + write) | %.2f ms | %.1f GB/s |\n", m.copy.median * 1e3,
                        m.copy_gbps);
  absl::StrAppendFormat(&md, "| memcpy 8 MiB, cache-resident (read + write) | %.3f ms | %.1f GB/s |\n",
                        m.cache_copy.median * 1e3, m.cache_copy_gbps);
  absl::StrAppendFormat(&md, "| empty `omp parallel` fork/join | %.2f µs | |\n\n", m.omp_fork_join_us);
  absl::StrAppendFormat(&md, "Ceiling used below: **%.1f GFLOP/s** (best sgemm shape), **%.1f GB/s** (copy).\n\n",
                        m.best_gemm_gflops, m.copy_gbps);

  md +=
      "## Prefill (time to first token, Submit + Step, median)\n\n"
      "| pattern | layers | prompt | ms (min–max) | tok/s | GFLOP | GFLOP/s | % of sgemm ceiling | indexer | "
      "attention | MoE | floor ms (bound) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
      "|\n";
  for (const PatternResults& p : patterns) {
    for (const PrefillResult& r : p.prefill) {
      const Floor f = FloorOf(r.cost, m);
      absl::StrAppendFormat(
          &md, "| %s | %s | %d | %.1f (%.1f–%.1f) | %.0f | %.2f | %.1f | %.1f%% | %s | %s | %s | %.1f (%s) |\n",
          p.spec.name, p.layers, r.prompt_len, r.seconds.median * 1e3, r.seconds.min * 1e3, r.seconds.max * 1e3,
          r.tokens_per_s, r.cost.flops() * 1e-9, r.gflops, 100.0 * r.gflops / m.best_gemm_gflops, Pct(r.shares.indexer),
          Pct(r.shares.attention), Pct(r.shares.moe), f.seconds() * 1e3, f.bound());
    }
  }
  md +=
      "\n## Decode (one token per sequence per step, median step)\n\n"
      "| pattern | batch | context | ms/step (min–max) | tok/s | MFLOP/step | GFLOP/s | MB/step | GB/s | indexer | "
      "attention | MoE | floor ms (bound) | floor ms, bytes from cache |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const PatternResults& p : patterns) {
    for (const DecodeResult& r : p.decode) {
      const Floor f = FloorOf(r.cost, m);
      const double cached_floor = std::max(f.compute_s, r.cost.bytes() / (m.cache_copy_gbps * 1e9));
      absl::StrAppendFormat(&md,
                            "| %s | %d | %d (mean pos %.0f) | %.2f (%.2f–%.2f) | %.0f | %.1f | %.1f | %.1f | %.1f | %s "
                            "| %s | %s | %.2f (%s) | %.2f |\n",
                            p.spec.name, r.batch, r.context, r.mean_position, r.step_seconds.median * 1e3,
                            r.step_seconds.min * 1e3, r.step_seconds.max * 1e3, r.tokens_per_s, r.cost.flops() * 1e-6,
                            r.gflops, r.cost.bytes() * 1e-6, r.cost.bytes() / r.step_seconds.median * 1e-9,
                            Pct(r.shares.indexer), Pct(r.shares.attention), Pct(r.shares.moe), f.seconds() * 1e3,
                            f.bound(), cached_floor * 1e3);
    }
  }

  // The machine is shared: a repetition far slower than the median means something else ran.
  std::vector<std::string> disturbed;
  for (const PatternResults& p : patterns) {
    for (const PrefillResult& r : p.prefill) {
      if (r.seconds.max > 2.0 * r.seconds.median)
        disturbed.push_back(absl::StrFormat("%s prefill %d", p.spec.name, r.prompt_len));
    }
    for (const DecodeResult& r : p.decode) {
      if (r.step_seconds.max > 2.0 * r.step_seconds.median) {
        disturbed.push_back(absl::StrFormat("%s decode batch %d context %d", p.spec.name, r.batch, r.context));
      }
    }
  }
  md += disturbed.empty()
            ? "\nNo case had a repetition slower than twice its median.\n"
            : "\n**Disturbed** (a repetition slower than twice the median — other load on the machine): " +
                  absl::StrJoin(disturbed, "; ") + ".\n";

  if (patterns.size() > 1) {
    const PatternResults& base = patterns.front();
    md += "\n## IndexCache speedup over " + base.spec.name + "\n\n";
    md += "Predicted: 1 / ((1 − s) + s·F/F₀) with s the " + base.spec.name +
          " indexer share and F/F₀ the ratio of Full layers — the speedup if only the indexer time moved.\n\n";
    md += "| pattern | phase | size | " + base.spec.name + " ms | ms | speedup | predicted | indexer share " +
          base.spec.name + " → pattern |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (size_t i = 1; i < patterns.size(); ++i) {
      const PatternResults& p = patterns[i];
      for (const PrefillResult& r : p.prefill) {
        const PrefillResult* b = FindPrefill(base, r.prompt_len);
        if (b == nullptr) continue;
        absl::StrAppendFormat(
            &md, "| %s | prefill | %d tokens | %.1f | %.1f | %.2f× | %.2f× | %s → %s |\n", p.spec.name, r.prompt_len,
            b->seconds.median * 1e3, r.seconds.median * 1e3, b->seconds.median / r.seconds.median,
            PredictedSpeedup(b->shares.indexer, base.layers, p.layers), Pct(b->shares.indexer), Pct(r.shares.indexer));
      }
      for (const DecodeResult& r : p.decode) {
        const DecodeResult* b = FindDecode(base, r.batch, r.context);
        if (b == nullptr) continue;
        absl::StrAppendFormat(&md, "| %s | decode | batch %d, context %d | %.2f | %.2f | %.2f× | %.2f× | %s → %s |\n",
                              p.spec.name, r.batch, r.context, b->step_seconds.median * 1e3,
                              r.step_seconds.median * 1e3, b->step_seconds.median / r.step_seconds.median,
                              PredictedSpeedup(b->shares.indexer, base.layers, p.layers), Pct(b->shares.indexer),
                              Pct(r.shares.indexer));
      }
    }
  }

  md += "\n## Analytic FLOP and byte model\n\n";
  md += CostFormulaMarkdown();
  md +=
      "\nCross-check of the indexer term against the engine's own count (IndexCacheStats::indexer_flops), per "
      "prefill:\n\n| pattern | prompt | this model | engine | ratio |\n| --- | --- | --- | --- | --- |\n";
  for (const PatternResults& p : patterns) {
    for (const PrefillResult& r : p.prefill) {
      absl::StrAppendFormat(&md, "| %s | %d | %.4g | %.4g | %.4f |\n", p.spec.name, r.prompt_len, r.cost.indexer_flops,
                            r.engine_indexer_flops,
                            r.engine_indexer_flops > 0 ? r.cost.indexer_flops / r.engine_indexer_flops : 0.0);
    }
  }
  md +=
      "\nThe floor of a case is max(FLOPs / best sgemm rate, bytes / copy bandwidth): no implementation on this "
      "machine runs much faster. Measured / floor is the gap. The byte floor uses DRAM bandwidth; the tiny "
      "model's weights may stay in a large L3 between decode steps, so decode also shows the floor with bytes "
      "at the cache-resident copy rate.\n";
  return md;
}

}  // namespace indexcache::bench
