#include "bench/serving/timed_stream.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "bench/prompts.h"
#include "bench/timing.h"

namespace indexcache::bench {

client::GenerateRequest RandomRequest(uint32_t seed, int prompt_len, int max_new_tokens, int32_t vocab) {
  return GreedyRequest(RandomPrompt(prompt_len, vocab, seed), max_new_tokens);
}

client::GenerateRequest GreedyRequest(std::vector<int32_t> prompt, int max_new_tokens) {
  client::GenerateRequest request = client::GenerateRequest::FromIds(std::move(prompt));
  request.sampling.temperature = 0.0f;
  request.sampling.max_new_tokens = max_new_tokens;
  request.sampling.ignore_eos = true;
  return request;
}

TimedStream TimeStream(const client::Client& client, const client::GenerateRequest& request) {
  TimedStream t;
  const double start = NowSeconds();
  client::GenerateStream stream = client.Stream(request);
  double first = -1, last = start;
  while (true) {
    auto chunk = stream.Next();
    if (!chunk.ok()) {
      t.status = chunk.status();
      break;
    }
    if (!chunk->has_value()) break;
    const double now = NowSeconds();
    const size_t n = (*chunk)->token_ids.size();
    if (n > 0) {
      if (first < 0) {
        first = now;
        t.first_chunk_tokens = static_cast<int64_t>(n);
      } else {
        for (size_t i = 0; i < n; ++i) t.itl.push_back((now - last) / static_cast<double>(n));
      }
      last = now;
      t.tokens += static_cast<int64_t>(n);
      t.token_ids.insert(t.token_ids.end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
    }
    if ((*chunk)->final) t.final = (*chunk)->final;
  }
  t.total = NowSeconds() - start;
  t.ttft = first < 0 ? 0 : first - start;
  if (t.status.ok() && (!t.final || t.final->finish_reason != client::FinishReason::kLength)) {
    t.status = absl::InternalError(
        t.final ? "finish reason " + std::string(client::FinishReasonName(t.final->finish_reason)) + ": " + t.final->error
                : "stream ended without a final message");
  }
  return t;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

}  // namespace indexcache::bench
