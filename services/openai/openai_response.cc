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

json Usage(const v1::FinalInfo& final) {
  return {{"prompt_tokens", final.prompt_tokens()},
          {"completion_tokens", final.generated_tokens()},
          {"total_tokens", final.prompt_tokens() + final.generated_tokens()}};
}

json CompletionBody(const ResponseHeader& header, const std::string& text, const std::vector<int32_t>& token_ids,
                    const v1::FinalInfo& final) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishJson(FinishReasonName(final.finish_reason()))}};
  if (header.endpoint == Endpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  if (header.return_token_ids) choice["token_ids"] = token_ids;
  json body = Envelope(header, /*chunk=*/false);
  body["choices"] = json::array({std::move(choice)});
  body["usage"] = Usage(final);
  return body;
}

json ChunkBody(const ResponseHeader& header, const std::string& text, const std::vector<int32_t>& token_ids,
               bool first, const std::optional<std::string>& finish_reason) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishJson(finish_reason)}};
  if (header.endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || !finish_reason.has_value()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  if (header.return_token_ids) choice["token_ids"] = token_ids;
  json body = Envelope(header, /*chunk=*/true);
  body["choices"] = json::array({std::move(choice)});
  return body;
}

json UsageChunkBody(const ResponseHeader& header, const v1::FinalInfo& final) {
  json body = Envelope(header, /*chunk=*/true);
  body["choices"] = json::array();
  body["usage"] = Usage(final);
  return body;
}

}  // namespace indexcache::openai
