#include "bench/cluster/ttft_report.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/timing.h"

namespace indexcache::bench {
namespace {

using nlohmann::json;

double Num(const json& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0; }

// Median of `key` over the timed repetitions that succeeded.
double RepMedian(const json& reps, const char* key) {
  std::vector<double> v;
  for (const json& r : reps) {
    if (!r.value("warmup", false) && !r.contains("error") && r.contains(key)) v.push_back(r[key].get<double>());
  }
  return Summarize(v).median;
}

// The first successful timed repetition (its byte counts stand for every one: the report checks they agree).
const json* FirstGoodRep(const json& reps) {
  for (const json& r : reps) {
    if (!r.value("warmup", false) && !r.contains("error")) return &r;
  }
  return nullptr;
}

int64_t Bytes(const json& counts) {
  return counts.contains("error") ? -1
                                  : counts.value("kv", int64_t{0}) + counts.value("index_keys", int64_t{0}) +
                                        counts.value("metadata", int64_t{0});
}

std::string Seconds(double s) { return s > 0 ? absl::StrFormat("%.3f", s) : "—"; }
std::string Size(double bytes) {
  return bytes >= 1e9 ? absl::StrFormat("%.3f GB", bytes / 1e9) : absl::StrFormat("%.3f MB", bytes / 1e6);
}

// The rows' bytes (latent + index keys): what must match across repetitions and between the two ends
// (the framing's metadata differs by a few bytes with ids and varints).
bool SameRows(const json& a, const json& b) {
  return !a.contains("error") && !b.contains("error") && a["kv"] == b["kv"] && a["index_keys"] == b["index_keys"];
}

// "a; b" of every error in the case (engine, cluster start, repetitions), with the repetition named.
std::string Errors(const json& row) {
  std::string out;
  auto add = [&](const std::string& what, const json& j) {
    if (j.contains("error")) absl::StrAppend(&out, out.empty() ? "" : "; ", what, ": ", j["error"].get<std::string>());
  };
  add("engine", row["engine"]);
  add("cluster", row["cluster"]);
  if (row["cluster"].contains("reps")) {
    int i = 0;
    for (const json& r : row["cluster"]["reps"]) add(absl::StrCat(r.value("warmup", false) ? "warm-up " : "rep ", i++), r);
  }
  return out;
}

}  // namespace

void SummarizeCases(json& report) {
  const json& ceilings = report["ceilings"];
  const double tcp = ceilings.contains("loopback_tcp") ? Num(ceilings["loopback_tcp"], "bytes_per_second") : 0.0;
  for (json& row : report["cases"]) {
    json s;
    s["engine_s"] = Num(row["engine"], "median_s");
    s["engine_export_s"] = Num(row["engine"], "export_median_s");
    const json reps = row["cluster"].value("reps", json::array());
    for (const char* key : {"ttft_s", "prefill_s", "handoff_s", "queue_s", "server_first_token_s"}) {
      s[key] = RepMedian(reps, key);
    }
    int good = 0;
    for (const json& r : reps) good += !r.value("warmup", false) && !r.contains("error");
    s["timed_reps_ok"] = good;
    s["ttft_over_engine"] = s["engine_s"].get<double>() > 0 ? s["ttft_s"].get<double>() / s["engine_s"].get<double>() : 0.0;
    // Throughput with the export on as a share of it off: in process, and in the prefill worker.
    auto share = [&](const char* on) { return Num(s, on) > 0 ? Num(s, "engine_s") / Num(s, on) : 0.0; };
    s["export_on_over_off"] = share("engine_export_s");
    s["worker_prefill_over_off"] = share("prefill_s");
    if (const json* first = FirstGoodRep(reps)) {
      s["sent_bytes"] = (*first)["sent_bytes"];
      s["received_bytes"] = (*first)["received_bytes"];
      bool same = true;
      for (const json& r : reps) {
        if (!r.value("warmup", false) && !r.contains("error")) same = same && SameRows(r["sent_bytes"], (*first)["sent_bytes"]);
      }
      s["sent_bytes_same_every_rep"] = same;
      const json& sent = (*first)["sent_bytes"];
      const json& expected = row["expected_bytes"];
      s["bytes_exact"] = SameRows(sent, expected);
      if (!sent.contains("error") && expected["total"].get<double>() > 0) {
        s["rows_over_expected"] = (sent["kv"].get<double>() + sent["index_keys"].get<double>()) / expected["total"].get<double>();
      }
      s["received_equals_sent"] = SameRows((*first)["received_bytes"], sent);
      const double handoff = s["handoff_s"].get<double>();
      const int64_t total = Bytes(sent);
      s["handoff_bytes_per_second"] = handoff > 0 && total > 0 ? static_cast<double>(total) / handoff : 0.0;
      // The rate while the sender had rows: per repetition bytes / send time, the median of those.
      std::vector<double> rates;
      for (const json& r : reps) {
        if (r.value("warmup", false) || r.contains("error") || r["sent_bytes"].contains("error")) continue;
        const double send_s = r["sent_bytes"].value("send_seconds", 0.0);
        if (send_s > 0) rates.push_back(static_cast<double>(Bytes(r["sent_bytes"])) / send_s);
      }
      s["wire_bytes_per_second"] = Summarize(rates).median;
      s["wire_fraction_of_tcp_ceiling"] = tcp > 0 ? s["wire_bytes_per_second"].get<double>() / tcp : 0.0;
    }
    row["summary"] = s;
  }
}

std::string TtftMarkdown(const json& report) {
  std::string md = absl::StrFormat(
      "# Cluster time to first token vs the engine's prefill — %s, %s\n\n"
      "- command: `%s`\n- device `%s` (%s); host CPU %s, %d logical cores; git %s\n"
      "- cluster: router + 1 prefill + 1 decode worker of `indexcache` on this one device, transport %s, "
      "`--max-batch-tokens %d` for the engine and the workers, %d threads; greedy requests of random ids, "
      "max_new_tokens %d, TTFT timed at the client (C++ SDK, streaming)\n"
      "- load average before / after: %s / %s; total %.0f s\n\n",
      report["device_name"].get<std::string>(), report["date"].get<std::string>(), report["command"].get<std::string>(),
      report["device"].get<std::string>(), report["device_name"].get<std::string>(),
      report["cpu_model"].get<std::string>(), report["logical_cores"].get<int>(), report["git_commit"].get<std::string>(),
      report["transport"].get<std::string>(), report["max_batch_tokens"].get<int>(), report["threads"].get<int>(),
      report["max_new_tokens"].get<int>(), report["load_before"].get<std::string>(),
      report.value("load_after", std::string()), Num(report, "total_s"));

  const json& c = report["ceilings"];
  md += "## Ceilings (this machine, this run)\n\n| ceiling | rate |\n| --- | --- |\n";
  if (c["loopback_tcp"].contains("error")) {
    absl::StrAppend(&md, "| loopback TCP | failed: ", c["loopback_tcp"]["error"].get<std::string>(), " |\n");
  } else {
    const json& t = c["loopback_tcp"];
    absl::StrAppendFormat(&md,
                          "| loopback TCP, one connection over 127.0.0.1, %.1f GiB in %d MiB writes (median of %d, "
                          "min–max %.3f–%.3f s) | **%.2f GB/s** |\n",
                          Num(t, "bytes") / (1 << 30), static_cast<int>(Num(t, "write_bytes")) >> 20,
                          static_cast<int>(Num(t, "reps")), Num(t, "seconds_min"), Num(t, "seconds_max"),
                          Num(t, "bytes_per_second") / 1e9);
  }
  const json& m = c["memcpy"];
  absl::StrAppendFormat(&md,
                        "| host memcpy of %d MiB, one thread (bytes copied per second; traffic is twice) | %.2f GB/s |\n"
                        "| host memcpy of %d MiB, %d threads | %.2f GB/s |\n\n",
                        static_cast<int>(Num(m, "bytes")) >> 20, Num(m, "one_thread_copy_bytes_per_second") / 1e9,
                        static_cast<int>(Num(m, "bytes")) >> 20, static_cast<int>(Num(m, "threads")),
                        Num(m, "all_threads_copy_bytes_per_second") / 1e9);

  md +=
      "## Time to first token: the engine alone vs through the cluster (target ≤ 1.10×)\n\n"
      "| model | prompt tokens | engine prefill (s) | cluster TTFT (s) | TTFT / engine | server prefill_s | "
      "server handoff_s | TTFT − prefill_s (s) | reps ok (engine / cluster) |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& row : report["cases"]) {
    const json& s = row["summary"];
    const int engine_reps = row["engine"].contains("seconds") ? static_cast<int>(row["engine"]["seconds"].size()) : 0;
    absl::StrAppendFormat(&md, "| %s | %d | %s | %s | %s | %s | %s | %s | %d / %d |\n", row["model"].get<std::string>(),
                          row["prompt_tokens"].get<int>(), Seconds(Num(s, "engine_s")), Seconds(Num(s, "ttft_s")),
                          Num(s, "ttft_over_engine") > 0 ? absl::StrFormat("**%.2f×**", Num(s, "ttft_over_engine")) : "—",
                          Seconds(Num(s, "prefill_s")), Seconds(Num(s, "handoff_s")),
                          Num(s, "ttft_s") > 0 ? absl::StrFormat("%.3f", Num(s, "ttft_s") - Num(s, "prefill_s")) : "—",
                          engine_reps, s.value("timed_reps_ok", 0));
  }

  md +=
      "\n## Prefill throughput with the export on, as a share of it off (target ≥ 95%)\n\n"
      "| model | prompt tokens | engine, export off (s) | engine, export on (s) | on / off, in process | "
      "prefill worker's prefill_s (s) | on / off, in the cluster |\n| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& row : report["cases"]) {
    const json& s = row["summary"];
    auto percent = [&](const char* key) {
      return Num(s, key) > 0 ? absl::StrFormat("**%.1f%%**", 100 * Num(s, key)) : std::string("—");
    };
    absl::StrAppendFormat(&md, "| %s | %d | %s | %s | %s | %s | %s |\n", row["model"].get<std::string>(),
                          row["prompt_tokens"].get<int>(), Seconds(Num(s, "engine_s")),
                          Seconds(Num(s, "engine_export_s")), percent("export_on_over_off"),
                          Seconds(Num(s, "prefill_s")), percent("worker_prefill_over_off"));
  }

  md +=
      "\n## Handoff bytes per request vs the bf16 rows expected (target: exactly those; wire ≥ 50% of loopback TCP)\n\n"
      "| model | prompt tokens | latent bytes sent (expected) | index-key bytes sent (expected) | metadata bytes | "
      "exact? | decode received = sent? | wire rate while sending (GB/s) | of the TCP ceiling | bytes / handoff_s (GB/s) |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& row : report["cases"]) {
    const json& s = row["summary"];
    const json& e = row["expected_bytes"];
    if (!s.contains("sent_bytes") || s["sent_bytes"].contains("error")) {
      absl::StrAppendFormat(&md, "| %s | %d | — (%s) | | | | | | | |\n", row["model"].get<std::string>(),
                            row["prompt_tokens"].get<int>(),
                            s.contains("sent_bytes") ? s["sent_bytes"]["error"].get<std::string>() : "no successful repetition");
      continue;
    }
    const json& b = s["sent_bytes"];
    absl::StrAppendFormat(&md, "| %s | %d | %s (%s) | %s (%s) | %s | %s%s | %s | %.3f | %.0f%% | %.3f |\n",
                          row["model"].get<std::string>(), row["prompt_tokens"].get<int>(), Size(b["kv"].get<double>()),
                          Size(e["kv"].get<double>()), Size(b["index_keys"].get<double>()),
                          Size(e["index_keys"].get<double>()), Size(b["metadata"].get<double>()),
                          s.value("bytes_exact", false)
                              ? "yes"
                              : absl::StrFormat("**no**: %.2f× the expected rows", Num(s, "rows_over_expected")),
                          s.value("sent_bytes_same_every_rep", true) ? "" : " (reps differ)",
                          s.value("received_equals_sent", false) ? "yes" : "no",
                          Num(s, "wire_bytes_per_second") / 1e9, 100 * Num(s, "wire_fraction_of_tcp_ceiling"),
                          Num(s, "handoff_bytes_per_second") / 1e9);
  }

  md +=
      "\n## Bursts: concurrent requests on the same cluster (target: 0 failures, all queued and served)\n\n"
      "| model | requests × prompt tokens | completed | failed | TTFT p50 (s) | TTFT p99 (s) | TTFT max (s) | "
      "wall (s) | failures (count × message) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const json& b : report["bursts"]) {
    std::string failures;
    if (b.contains("error")) failures = "cluster: " + b["error"].get<std::string>();
    for (const json& f : b.value("failures", json::array())) {
      absl::StrAppend(&failures, failures.empty() ? "" : "<br>", f["count"].get<int>(), " × ",
                      f["message"].get<std::string>());
    }
    absl::StrAppendFormat(&md, "| %s | %d × %d | %d | %d | %s | %s | %s | %s | %s |\n", b["model"].get<std::string>(),
                          b["count"].get<int>(), b["prompt_tokens"].get<int>(), b.value("completed", 0),
                          b.value("failed", b["count"].get<int>()), Seconds(Num(b, "ttft_p50_s")),
                          Seconds(Num(b, "ttft_p99_s")), Seconds(Num(b, "ttft_max_s")), Seconds(Num(b, "wall_s")),
                          failures.empty() ? "none" : failures);
  }

  std::string errors;
  for (const json& row : report["cases"]) {
    const std::string e = Errors(row);
    if (!e.empty()) absl::StrAppend(&errors, "- ", row["model"].get<std::string>(), " @ ", row["prompt_tokens"].get<int>(), ": ", e, "\n");
  }
  for (const json& model : report["models"]) {
    if (model.contains("cluster_error")) absl::StrAppend(&errors, "- cluster of ", model["label"].get<std::string>(), ": ", model["cluster_error"].get<std::string>(), "\n");
  }
  if (!errors.empty()) md += "\n## Errors\n\n" + errors;

  md +=
      "\n## How to read it\n\n"
      "- **engine prefill**: one `Engine` in its own process with the workers' flags (device, chunk, KV cache), a "
      "prompt submitted alone, Submit → the Step that samples its first token; one warm-up prompt per length, "
      "then the median of the repetitions (fresh random ids each). No export, no network.\n"
      "- **export on / off**: the same engine alternates each repetition with its export on (`SubmitPrefill` with "
      "a sink whose consumer thread waits for every slice to land in pinned host memory and drops it, as the "
      "prefill worker's sender does before writing; the time runs until the last slice landed): what the export "
      "costs the prefill itself. In the cluster the prefill worker's `prefill_s` also carries what sharing the "
      "GPU with the decode worker costs (its imports are another process's work the GPU time-slices in).\n"
      "- **cluster TTFT**: the client's time from the streaming call to the first chunk with a token; median of the "
      "repetitions after the warm-up(s). The server's `prefill_s` (prefill worker: submit → prefill done) and "
      "`handoff_s` (first chunk sent → the decode worker's ack) come back in the stream's final message; the "
      "handoff starts after the first chunk and overlaps the rest of the prefill, so `handoff_s` includes compute, "
      "and TTFT − prefill_s is what disaggregation adds on top of the prefill worker's own compute.\n"
      "- **bytes**: `indexcache_handoff_bytes_total{payload=kv|index_keys|metadata}` of the prefill worker (sent) and "
      "the decode worker (received), read from their /metrics before and after each request. Expected: "
      "prompt × layers × (kv_lora_rank + qk_rope_head_dim) × 2 latent bytes and prompt × Full layers × "
      "index_head_dim × 2 index-key bytes (bf16 rows, nothing else). `exact?` compares both; the CPU "
      "backend's cache is f32, so there the rows are 2× by design. Received = sent compares the rows (framing "
      "metadata is counted differently at the two ends).\n"
      "- **wire rate while sending**: all bytes sent (latent + index keys + metadata) / the prefill worker's "
      "`indexcache_handoff_send_seconds_total` delta (time spent sealing and writing chunks, CRC included, not "
      "waiting for the compute to produce rows); the median over the repetitions, read beside the loopback TCP "
      "ceiling (the most one connection between two processes of this machine carries). bytes / handoff_s "
      "divides by a time that spans the prefill the transfer streams beside: a lower bound, paced by compute.\n"
      "- **bursts**: every request started at once from its own thread (one latch); TTFT percentiles are "
      "nearest-rank over the completed requests; failures are grouped by their full status message.\n";
  return md;
}

}  // namespace indexcache::bench
