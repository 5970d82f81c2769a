// Plain C++ mirrors of the indexcache.v1 public API (proto/indexcache/v1/generate.proto), so that
// callers of the client library never touch protobuf. Every sampling knob is a std::optional: unset
// means "the server's default", which is why a default-constructed request never asks for
// temperature 0 (proto3 would read a plain zero field as greedy).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/time/time.h"

namespace indexcache::client {

// Server defaults in comments (they live on the server, not here).
struct SamplingParams {
  std::optional<float> temperature;       // 1.0; 0 = greedy
  std::optional<int32_t> top_k;           // 0 = off
  std::optional<float> top_p;             // 1.0
  std::optional<float> min_p;             // 0.0
  std::optional<uint64_t> seed;           // random
  std::optional<int32_t> max_new_tokens;  // 128; must be >= 1
  std::optional<bool> ignore_eos;         // false
  std::vector<std::string> stop;          // stop strings, not included in the output text
  std::vector<int32_t> stop_token_ids;
  // Per generated token, its log-probability and the top_logprobs (0–20) most likely alternatives:
  // the model's raw distribution, before temperature and the filters.
  std::optional<bool> logprobs;           // false
  std::optional<int32_t> top_logprobs;    // 0; needs logprobs
  std::optional<int32_t> n;               // 1; independent choices, 1–16 (a seed gives choice i seed + i)
};

struct GenerateRequest {
  // Text (encoded by the server's tokenizer) or token ids: exactly one, by construction.
  std::variant<std::string, std::vector<int32_t>> input;
  SamplingParams sampling;
  // Optional label (at most 64 of [A-Za-z0-9._:-]); the router's id for the request is
  // "<label>-<32 random hex digits>", reported in every chunk and in the result.
  std::string request_id;
  // Deadline of this call, measured from its start; unset: ClientOptions::default_timeout.
  std::optional<absl::Duration> timeout;

  static GenerateRequest FromText(std::string text);
  static GenerateRequest FromIds(std::vector<int32_t> ids);
};

enum class FinishReason { kUnspecified, kStop, kLength, kAbort, kError };

// "stop", "length", "abort", "error" or "unspecified" (the CLI's --json spelling).
std::string_view FinishReasonName(FinishReason reason);

struct Timings {
  double queue_seconds = 0;        // router admission until a prefill worker started
  double prefill_seconds = 0;      // prefill worker compute
  double handoff_seconds = 0;      // KV + index-cache transfer until the decode worker admitted it
  double first_token_seconds = 0;  // request arrival until the first token was sent
  double total_seconds = 0;
  double mean_inter_token_seconds = 0;
};

// What the last message of a stream carries.
struct FinalInfo {
  FinishReason finish_reason = FinishReason::kUnspecified;
  std::string error;  // why, when finish_reason is kError
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  Timings timings;
  std::string index_pattern;  // the F/S layer pattern that served the request
  std::string prefill_worker;
  std::string decode_worker;
};

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0;  // natural log
};

// One generated token's log-probability and its position's most likely tokens.
struct TokenLogprobs {
  int32_t token_id = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top_logprobs;  // most likely first
};

// One message of a Generate stream: the tokens new in it for choice `index`, and `final` on that
// choice's last message only (with n > 1 the choices' messages interleave).
struct GenerateChunk {
  std::string request_id;
  int32_t index = 0;
  std::vector<int32_t> token_ids;
  std::string text;  // text delta; empty when the model has no tokenizer
  std::vector<TokenLogprobs> logprobs;  // one per token id, when sampling.logprobs
  std::optional<FinalInfo> final;
};

// One choice of a whole stream, concatenated.
struct Choice {
  int32_t index = 0;
  std::vector<int32_t> output_ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // one per output id, when sampling.logprobs
  FinalInfo final;
};

// A whole stream: what it inherits is choice 0 (the whole result of the usual one-choice request);
// `choices` holds every choice by index, choice 0 included.
struct GenerateResult : Choice {
  std::string request_id;
  std::vector<Choice> choices;
};

struct ModelInfo {
  std::string architecture;  // "GlmMoeDsaForCausalLM"
  int32_t num_layers = 0;
  int32_t hidden_size = 0;
  int32_t vocab_size = 0;
  int32_t index_topk = 0;
  std::string index_pattern;
  int32_t num_full_layers = 0;
  int32_t max_context = 0;
  bool has_tokenizer = false;
  std::string model_fingerprint;
  int32_t prefill_workers = 0;
  int32_t decode_workers = 0;
  // An adaptive pattern's ranges, "N:PATTERN,...": prompts of at least N tokens run PATTERN, shorter
  // ones index_pattern. Empty: index_pattern serves every prompt.
  std::string length_patterns;
};

}  // namespace indexcache::client
