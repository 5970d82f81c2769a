// An OpenAI completions or chat-completions request body turned into the router's own
// indexcache.v1.GenerateRequest, which then takes the same path as a gRPC client's: the router's
// validation (RequestValidator) and dispatch. Only the shape is checked here — types, and the
// OpenAI features this server does not offer — so every value check lives in one place.
//
// Supported: model, prompt (a string, token ids, or a one-element array of either), messages,
// max_tokens (max_completion_tokens for chat), n, temperature, top_p, stop, seed, stream,
// stream_options.include_usage, logprobs (completions: an integer 0–5; chat: true, with top_logprobs
// 0–20), and the common extensions top_k, min_p, ignore_eos, stop_token_ids and return_token_ids (the
// choice then carries its `token_ids`, as vLLM's does). Refused with INVALID_ARGUMENT: best_of > 1,
// echo, suffix, non-zero penalties, logit_bias, batched prompts. Unknown fields are ignored, as
// OpenAI's API ignores them.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "indexcache/v1/generate.pb.h"
#include "nlohmann/json.hpp"
#include "services/openai/chat_template.h"

namespace indexcache::openai {

enum class Endpoint { kCompletions, kChat };

struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  v1::GenerateRequest generate;
  bool stream = false;
  bool include_usage = false;      // stream_options.include_usage: a last chunk with `usage`
  bool return_token_ids = false;   // each choice (and chunk) also carries its token ids
};

// OpenAI's default max_tokens for /v1/completions; chat leaves it to the router's default.
inline constexpr int kCompletionsDefaultMaxTokens = 16;
// The legacy completions API's bound on `logprobs` (chat's top_logprobs goes to 20).
inline constexpr int kCompletionsMaxLogprobs = 5;

// `served_model` is the id /v1/models lists; a request naming another model is NOT_FOUND.
absl::StatusOr<OpenAiRequest> ParseRequest(Endpoint endpoint, const std::string& body,
                                           const std::string& served_model, const ChatTemplate& chat_template);

}  // namespace indexcache::openai
