#include "bench/agentic/agentic_report.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/serving/timed_stream.h"

namespace indexcache::bench {
namespace {

nlohmann::json TtftJson(const std::vector<TurnRecord>& turns) {
  std::vector<double> all, first, later;
  for (const TurnRecord& t : turns) {
    if (!t.status.ok()) continue;
    all.push_back(t.ttft_seconds);
    (t.turn == 0 ? first : later).push_back(t.ttft_seconds);
  }
  return {{"p50", Percentile(all, 50)},
          {"p90", Percentile(all, 90)},
          {"p99", Percentile(all, 99)},
          {"first_turn_p50", Percentile(first, 50)},
          {"later_turns_p50", Percentile(later, 50)}};
}

// The share of a session's turns after its first that went to the same worker of `role` as the turn
// before (both turns completed: a failed turn may name no worker).
nlohmann::json AffinityJson(const std::vector<TurnRecord>& turns, bool prefill) {
  int64_t same = 0, eligible = 0;
  for (size_t i = 1; i < turns.size(); ++i) {
    const TurnRecord &previous = turns[i - 1], &t = turns[i];
    if (t.session != previous.session || !t.status.ok() || !previous.status.ok()) continue;
    ++eligible;
    same += prefill ? t.prefill_worker == previous.prefill_worker : t.decode_worker == previous.decode_worker;
  }
  return {{"same_worker", same},
          {"eligible_turns", eligible},
          {"share", eligible > 0 ? static_cast<double>(same) / static_cast<double>(eligible) : 0.0}};
}

// The prefix cache hits a perfect router could give: each turn after a session's first finds the whole
// blocks of the previous turn's prompt, which the prefill worker that ran it cached (the generated
// tokens it never saw, and a partial last block, it computes again).
int64_t ReachableHitTokens(const std::vector<TurnRecord>& turns, int block_size) {
  int64_t reachable = 0;
  for (size_t i = 1; i < turns.size(); ++i) {
    const TurnRecord &previous = turns[i - 1], &t = turns[i];
    if (t.session == previous.session && previous.status.ok()) {
      reachable += previous.prompt_tokens / block_size * block_size;
    }
  }
  return reachable;
}

// max / min over the workers of a role; null when one of them got nothing.
nlohmann::json MaxOverMin(const std::vector<int64_t>& values) {
  if (values.empty()) return nullptr;
  const auto [min, max] = std::minmax_element(values.begin(), values.end());
  if (*min == 0) return nullptr;
  return static_cast<double>(*max) / static_cast<double>(*min);
}

// Turns and prompt tokens per worker (completed turns, every worker the cluster started, idle ones
// too), its prefix cache counters, and the imbalance across each role's workers.
nlohmann::json LoadJson(const AgenticRun& run) {
  struct Load {
    int64_t turns = 0, prompt_tokens = 0;
  };
  std::map<std::string, Load> load;
  for (const LocalWorker& w : run.workers) load[w.id];
  for (const TurnRecord& t : run.replay.turns) {
    if (!t.status.ok()) continue;
    for (const std::string& id : {t.prefill_worker, t.decode_worker}) {
      ++load[id].turns;
      load[id].prompt_tokens += t.prompt_tokens;
    }
  }
  nlohmann::json workers = nlohmann::json::array();
  std::map<std::string, std::vector<int64_t>> turns_by_role, tokens_by_role;
  for (const LocalWorker& w : run.workers) {
    const Load& l = load[w.id];
    nlohmann::json row = {{"id", w.id}, {"role", w.role}, {"turns", l.turns}, {"prompt_tokens", l.prompt_tokens}};
    if (run.counters.ok() && run.counters->prefix_cache.contains(w.id)) {
      row["prefix_cache"] = PrefixCacheJson(run.counters->prefix_cache.at(w.id));
    }
    workers.push_back(row);
    turns_by_role[w.role].push_back(l.turns);
    tokens_by_role[w.role].push_back(l.prompt_tokens);
  }
  nlohmann::json out = {{"workers", workers}};
  for (const char* role : {"prefill", "decode"}) {
    out[role] = {{"turns_max_over_min", MaxOverMin(turns_by_role[role])},
                 {"prompt_tokens_max_over_min", MaxOverMin(tokens_by_role[role])}};
  }
  // A worker FinalInfo named that the cluster did not start would be a router bug worth seeing.
  for (const auto& [id, l] : load) {
    const bool started =
        std::any_of(run.workers.begin(), run.workers.end(), [&](const LocalWorker& w) { return w.id == id; });
    if (!started) out["unknown_workers"].push_back({{"id", id}, {"turns", l.turns}});
  }
  return out;
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

// "1.23" for a ratio; null (a worker of the role got nothing) says so.
std::string RatioText(const nlohmann::json& v) {
  return v.is_null() ? "- (an idle worker)" : absl::StrFormat("%.2f", v.get<double>());
}

std::string Percent(double share) { return absl::StrFormat("%.1f%%", 100 * share); }

}  // namespace

nlohmann::json RunJson(const AgenticRun& run) {
  const std::vector<TurnRecord>& turns = run.replay.turns;
  int64_t completed = 0, failed = 0, prompt_tokens_sent = 0;
  std::string first_error;
  for (const TurnRecord& t : turns) {
    prompt_tokens_sent += t.prompt_tokens;
    if (t.status.ok()) {
      ++completed;
    } else if (failed++ == 0) {
      first_error = absl::StrCat("session ", t.session, " turn ", t.turn, ": ", t.status.ToString());
    }
  }
  nlohmann::json out = {{"prefix_cache", run.prefix_cache},
                        {"wall_seconds", run.replay.wall_seconds},
                        {"turns",
                         {{"sent", turns.size()},
                          {"completed", completed},
                          {"failed", failed},
                          {"not_sent", run.replay.turns_not_sent},
                          {"first_error", first_error}}},
                        {"ttft_seconds", TtftJson(turns)},
                        {"prompt_tokens_sent", prompt_tokens_sent},
                        {"affinity", {{"prefill", AffinityJson(turns, true)}, {"decode", AffinityJson(turns, false)}}},
                        {"load", LoadJson(run)},
                        {"cluster_commands", run.command_lines}};
  if (!run.counters.ok()) {
    out["counters_error"] = run.counters.status().ToString();
    out["routing_decisions"] = "unknown: " + run.counters.status().ToString();
    return out;
  }
  // The prefill workers' lookups: a decode worker imports the KV it is sent and computes no prompt.
  PrefixCacheCounters prefill;
  for (const LocalWorker& w : run.workers) {
    if (w.role == "prefill") prefill += run.counters->prefix_cache.at(w.id);
  }
  out["prefill_prefix_cache"] = PrefixCacheJson(prefill);
  const int64_t reachable = ReachableHitTokens(turns, run.block_size);
  out["reachable_hit_tokens"] = reachable;
  out["hit_tokens_share_of_reachable"] = Ratio(prefill.hit_tokens, static_cast<double>(reachable));
  out["prefill_tokens_computed"] = prompt_tokens_sent - static_cast<int64_t>(prefill.hit_tokens);
  nlohmann::json migrations = nlohmann::json::object();
  for (const auto& [reason, n] : run.counters->migrations) {
    if (n > 0) migrations[reason] = static_cast<int64_t>(n);
  }
  out["migrations"] = migrations;
  out["routing_decisions"] = RoutingDecisionsJson(run.counters->routing);
  return out;
}

nlohmann::json ComparisonJson(const nlohmann::json& off, const nlohmann::json& on) {
  nlohmann::json out = {{"ttft_p50_off_over_on", Ratio(off["ttft_seconds"]["p50"], on["ttft_seconds"]["p50"])},
                        {"ttft_p99_off_over_on", Ratio(off["ttft_seconds"]["p99"], on["ttft_seconds"]["p99"])},
                        {"later_turns_ttft_p50_off_over_on",
                         Ratio(off["ttft_seconds"]["later_turns_p50"], on["ttft_seconds"]["later_turns_p50"])}};
  if (off.contains("prefill_tokens_computed") && on.contains("prefill_tokens_computed")) {
    const double computed_off = off["prefill_tokens_computed"], computed_on = on["prefill_tokens_computed"];
    out["prefill_tokens_computed_off_over_on"] = Ratio(computed_off, computed_on);
    out["prefill_tokens_computed_on_share_of_off"] = Ratio(computed_on, computed_off);
  }
  return out;
}

std::string ReportMarkdown(const nlohmann::json& report) {
  const nlohmann::json& trace = report["trace"];
  const nlohmann::json& cluster = report["cluster"];
  std::string md = absl::StrFormat(
      "# Agentic multi-turn benchmark %s\n\n- device: %s; CPU: %s (%d logical cores)\n- git commit: %s\n"
      "- command: `%s`\n- driver: `%s`\n- model: %s\n"
      "- trace: %d sessions x %d turns, first turn %d ids, +%d ids a turn (after the %d generated), greedy with "
      "ignore_eos, up to %d sessions in flight, seed %d; longest context %d tokens\n"
      "- cluster: router + %d prefill + %d decode workers on loopback, transport %s, %d engine threads, %d MiB KV "
      "and %d-token KV blocks per worker; a fresh cluster per run\n- load average before / after: %s / %s\n\n",
      report["date"].get<std::string>(), report["device_name"].get<std::string>(),
      report["cpu_model"].get<std::string>(), report["logical_cores"].get<int>(),
      report["git_commit"].get<std::string>(), report["command"].get<std::string>(),
      report["driver_command"].get<std::string>(), report["model"].get<std::string>(), trace["sessions"].get<int>(),
      trace["turns"].get<int>(), trace["first_turn_tokens"].get<int>(), trace["turn_tokens"].get<int>(),
      trace["max_new_tokens"].get<int>(), trace["concurrency"].get<int>(), trace["seed"].get<int>(),
      trace["longest_context"].get<int>(), cluster["prefill"].get<int>(), cluster["decode"].get<int>(),
      cluster["transport"].get<std::string>(), cluster["threads"].get<int>(), cluster["kv_cache_mb"].get<int>(),
      cluster["block_size"].get<int>(), report["load_before"].get<std::string>(),
      report["load_after"].get<std::string>());

  md +=
      "| prefix cache | turns ok / failed / not sent | TTFT p50 / p99 (ms) | 1st turn / later turns p50 (ms) | "
      "prompt tokens sent | prefill tokens computed | hit rate tokens / blocks | same prefill / decode worker as "
      "the session's previous turn | turns per worker max/min prefill / decode | wall (s) |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const nlohmann::json& r : report["runs"]) {
    const nlohmann::json& turns = r["turns"];
    const nlohmann::json& ttft = r["ttft_seconds"];
    const bool counted = r.contains("prefill_prefix_cache");
    md += absl::StrFormat(
        "| %s | %d / %d / %d | %.1f / %.1f | %.1f / %.1f | %d | %s | %s | %s / %s | %s / %s | %.1f |\n",
        r["prefix_cache"].get<bool>() ? "on" : "off", turns["completed"].get<int64_t>(), turns["failed"].get<int64_t>(),
        turns["not_sent"].get<int64_t>(), 1e3 * ttft["p50"].get<double>(), 1e3 * ttft["p99"].get<double>(),
        1e3 * ttft["first_turn_p50"].get<double>(), 1e3 * ttft["later_turns_p50"].get<double>(),
        r["prompt_tokens_sent"].get<int64_t>(),
        counted ? absl::StrCat(r["prefill_tokens_computed"].get<int64_t>()) : "unknown",
        counted ? absl::StrCat(Percent(r["prefill_prefix_cache"]["token_hit_rate"]), " / ",
                               Percent(r["prefill_prefix_cache"]["block_hit_rate"]))
                : "unknown",
        Percent(r["affinity"]["prefill"]["share"]), Percent(r["affinity"]["decode"]["share"]),
        RatioText(r["load"]["prefill"]["turns_max_over_min"]), RatioText(r["load"]["decode"]["turns_max_over_min"]),
        r["wall_seconds"].get<double>());
  }
  const nlohmann::json& c = report["comparison"];
  md += absl::StrFormat("\nOff / on (cold / warm): TTFT p50 %.2fx, p99 %.2fx, later turns' p50 %.2fx",
                        c["ttft_p50_off_over_on"].get<double>(), c["ttft_p99_off_over_on"].get<double>(),
                        c["later_turns_ttft_p50_off_over_on"].get<double>());
  if (c.contains("prefill_tokens_computed_off_over_on")) {
    md += absl::StrFormat("; prefill tokens computed %.2fx (on computes %s of off's)",
                          c["prefill_tokens_computed_off_over_on"].get<double>(),
                          Percent(c["prefill_tokens_computed_on_share_of_off"]));
  }
  md += ".\n";

  for (const nlohmann::json& r : report["runs"]) {
    const std::string run = r["prefix_cache"].get<bool>() ? "on" : "off";
    md += absl::StrFormat("\n## Prefix cache %s\n\n", run);
    if (!r["turns"]["first_error"].get<std::string>().empty()) {
      md += absl::StrFormat("First error: `%s`\n\n", r["turns"]["first_error"].get<std::string>());
    }
    if (r.contains("counters_error"))
      md += absl::StrFormat("Counters not read: `%s`\n\n", r["counters_error"].get<std::string>());
    md +=
        "| worker | turns | prompt tokens | prefix cache hit / queried tokens | hit / queried blocks | evictions |\n"
        "|---|---|---|---|---|---|\n";
    for (const nlohmann::json& w : r["load"]["workers"]) {
      const bool has = w.contains("prefix_cache");
      md += absl::StrFormat("| %s | %d | %d | %s | %s | %s |\n", w["id"].get<std::string>(), w["turns"].get<int64_t>(),
                            w["prompt_tokens"].get<int64_t>(),
                            has ? absl::StrCat(w["prefix_cache"]["hit_tokens"].get<int64_t>(), " / ",
                                               w["prefix_cache"]["queried_tokens"].get<int64_t>())
                                : "-",
                            has ? absl::StrCat(w["prefix_cache"]["hit_blocks"].get<int64_t>(), " / ",
                                               w["prefix_cache"]["queried_blocks"].get<int64_t>())
                                : "-",
                            has ? absl::StrCat(w["prefix_cache"]["evictions"].get<int64_t>()) : "-");
    }
    if (r.contains("reachable_hit_tokens")) {
      md += absl::StrFormat(
          "\nPrefix cache hits on the prefill workers: %d tokens of the %d a router that always sent a session back to "
          "the worker of its previous turn could reach (%s).\n",
          r["prefill_prefix_cache"]["hit_tokens"].get<int64_t>(), r["reachable_hit_tokens"].get<int64_t>(),
          Percent(r["hit_tokens_share_of_reachable"]));
    }
    md += absl::StrFormat("\nPrompt tokens per worker, max/min: prefill %s, decode %s.\n",
                          RatioText(r["load"]["prefill"]["prompt_tokens_max_over_min"]),
                          RatioText(r["load"]["decode"]["prompt_tokens_max_over_min"]));
    if (r["load"].contains("unknown_workers")) {
      md += absl::StrFormat("Turns FinalInfo gave to workers the cluster did not start: `%s`\n",
                            r["load"]["unknown_workers"].dump());
    }
    if (r.contains("migrations")) {
      std::vector<std::string> parts;
      for (const auto& [reason, n] : r["migrations"].items())
        parts.push_back(absl::StrCat(reason, " ", n.get<int64_t>()));
      md += absl::StrFormat(
          "Streams the router migrated (`indexcache_router_migrations_total`, by reason; each prefilled again): %s.\n",
          parts.empty() ? "none" : absl::StrJoin(parts, ", "));
    }
    const nlohmann::json& routing = r["routing_decisions"];
    if (routing.is_string()) {
      md += absl::StrFormat("Router routing decisions (`indexcache_router_routing_decisions_total`): %s.\n",
                            routing.get<std::string>());
    } else {
      std::vector<std::string> parts;
      for (const auto& [key, n] : routing.items()) parts.push_back(absl::StrCat(key, " ", n.get<int64_t>()));
      md += absl::StrFormat("Router routing decisions (role/basis): %s.\n", absl::StrJoin(parts, ", "));
    }
    md +=
        "\nCluster:\n\n```\n" + absl::StrJoin(r["cluster_commands"].get<std::vector<std::string>>(), "\n") + "\n```\n";
  }
  md +=
      "\nTTFT is the client's, until the first chunk carrying tokens, over completed turns. Prefill tokens computed "
      "= prompt tokens sent - the prefill workers' `indexcache_prefix_cache_hit_tokens_total` over the run; hit "
      "rates are the prefill workers' hit / queried tokens and blocks. Affinity counts a session's turns after its "
      "first whose worker (FinalInfo) is the one its previous turn had. Counters are read before and after each "
      "run; nothing is sent before the trace (no warm-up), so the first turns also pay each worker's first-request "
      "costs, in both runs alike.\n";
  return md;
}

}  // namespace indexcache::bench
