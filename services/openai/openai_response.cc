#include "services/openai/openai_response.h"

namespace indexcache::openai {
namespace {

using nlohmann::json;

json Envelope(const ResponseHeader& header, bool chunk) {
  const bool chat = header.endpoint == Endpoint::kChat;
  return {{"id", (chat ? "chatcmpl-" : "cmpl-") + header.request_id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", header.created},
          {"model", header.model}};
}

json FinishJson(const std::optional<std::string>& finish_reason) {
  return finish_reason.has_value() ? json(*finish_reason) : json(nullptr);
}

}  // namespace

std::string Dump(const json& body) { return body.dump(-1, ' ', false, json::error_handler_t::replace); }

std::optional<std::string> FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::STOP:
      return "stop";
    case v1::LENGTH:
      return "length";
    case v1::ABORT:
      return "abort";
    default:
      return std::nullopt;
  }
}

json Usage(const std::vector<v1::FinalInfo>& finals) {
  const int64_t prompt = finals.empty() ? 0 : finals.front().prompt_tokens();
  int64_t completion = 0;
  for (const v1::FinalInfo& final : finals) completion += final.generated_tokens();
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

json CompletionBody(const ResponseHeader& header, const std::vector<ChoicePart>& choices,
                    const std::vector<v1::FinalInfo>& finals) {
  json out = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoicePart& part = choices[i];
    json choice = {{"index", part.index},
                   {"logprobs", part.logprobs},
                   {"finish_reason", FinishJson(FinishReasonName(finals[i].finish_reason()))}};
    if (header.endpoint == Endpoint::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", part.text}};
    } else {
      choice["text"] = part.text;
    }
    if (header.return_token_ids) choice["token_ids"] = part.token_ids;
    out.push_back(std::move(choice));
  }
  json body = Envelope(header, /*chunk=*/false);
  body["choices"] = std::move(out);
  body["usage"] = Usage(finals);
  return body;
}

json ChunkBody(const ResponseHeader& header, const ChoicePart& part, bool first,
               const std::optional<std::string>& finish_reason) {
  json choice = {{"index", part.index}, {"logprobs", part.logprobs}, {"finish_reason", FinishJson(finish_reason)}};
  if (header.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!part.text.empty() || !finish_reason.has_value()) delta["content"] = part.text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = part.text;
  }
  if (header.return_token_ids) choice["token_ids"] = part.token_ids;
  json body = Envelope(header, /*chunk=*/true);
  body["choices"] = json::array({std::move(choice)});
  return body;
}

json UsageChunkBody(const ResponseHeader& header, const std::vector<v1::FinalInfo>& finals) {
  json body = Envelope(header, /*chunk=*/true);
  body["choices"] = json::array();
  body["usage"] = Usage(finals);
  return body;
}

}  // namespace indexcache::openai
