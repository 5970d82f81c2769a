// The OpenAI response bodies built from the router's GenerateResponse stream: a whole completion
// (object "text_completion" / "chat.completion") or one server-sent-event chunk of a streamed one
// ("text_completion" / "chat.completion.chunk"). Ids are "cmpl-<router request id>" and
// "chatcmpl-<router request id>", so a response can be found in the router's log.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "indexcache/v1/generate.pb.h"
#include "nlohmann/json.hpp"
#include "services/openai/openai_request.h"

namespace indexcache::openai {

// What identifies one response; the same in every chunk of a stream.
struct ResponseHeader {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string request_id;  // the router's
  std::string model;
  int64_t created = 0;     // Unix seconds
  bool return_token_ids = false;
};

// What one choice (`index`, 0 … n-1) produced: all of it for a whole body, one router message's worth
// for a chunk.
struct ChoicePart {
  int index = 0;
  std::string text;
  std::vector<int32_t> token_ids;
  nlohmann::json logprobs;  // the endpoint's logprobs object (openai_logprobs.h); null when not asked
};

// The JSON text of a body. Model text is valid UTF-8 (the decoder holds back partial characters);
// should a broken byte reach here all the same, it becomes U+FFFD instead of an exception.
std::string Dump(const nlohmann::json& body);

// OpenAI's finish_reason: "stop", "length", or (vLLM's word) "abort"; ERROR is not a finish reason
// but a failure, and has no name here.
std::optional<std::string> FinishReasonName(v1::FinishReason reason);

// Every choice's final: the prompt counted once (the choices share it, as OpenAI counts them), the
// completion tokens of all choices summed.
nlohmann::json Usage(const std::vector<v1::FinalInfo>& finals);

// The non-streamed body: the choices (with finals[i] choice i's end) and the usage.
nlohmann::json CompletionBody(const ResponseHeader& header, const std::vector<ChoicePart>& choices,
                              const std::vector<v1::FinalInfo>& finals);

// One streamed chunk carrying one choice's `part`; `finish_reason` set on its last one. A chat
// choice's first chunk (`first`) also carries the assistant role, as OpenAI's does.
nlohmann::json ChunkBody(const ResponseHeader& header, const ChoicePart& part, bool first,
                         const std::optional<std::string>& finish_reason);

// stream_options.include_usage's extra last chunk: no choices, the usage.
nlohmann::json UsageChunkBody(const ResponseHeader& header, const std::vector<v1::FinalInfo>& finals);

}  // namespace indexcache::openai
