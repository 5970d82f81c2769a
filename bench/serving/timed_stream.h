// One streaming Generate call timed at the client, and the percentiles the serving benchmarks report.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "indexcache/client.h"

namespace indexcache::bench {

// A greedy request of `prompt`, `max_new_tokens` with ignore_eos, so every successful stream ends with
// finish reason "length".
client::GenerateRequest GreedyRequest(std::vector<int32_t> prompt, int max_new_tokens);

// A greedy request of RandomPrompt(prompt_len, vocab, seed) (bench/prompts.h), `max_new_tokens` with
// ignore_eos, so every successful stream ends with finish reason "length".
client::GenerateRequest RandomRequest(uint32_t seed, int prompt_len, int max_new_tokens, int32_t vocab);

// What one stream showed at the client. Seconds from the call's start.
struct TimedStream {
  absl::Status status;  // OK only when the stream ended with finish reason "length"
  double ttft = 0;      // until the first chunk that carried tokens
  double total = 0;
  int64_t tokens = 0;
  std::vector<int32_t> token_ids;  // the generated ids, in order
  int64_t first_chunk_tokens = 0;  // tokens that came with the first chunk (no inter-token gap)
  std::vector<double> itl;         // one entry per token after the first chunk: chunk gap / its tokens
  std::optional<client::FinalInfo> final;
};

TimedStream TimeStream(const client::Client& client, const client::GenerateRequest& request);

// Nearest-rank percentile of an unsorted sample; 0 when empty.
double Percentile(std::vector<double> v, double p);

}  // namespace indexcache::bench
