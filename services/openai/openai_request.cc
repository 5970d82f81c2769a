#include "services/openai/openai_request.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache::openai {
namespace {

using nlohmann::json;

absl::Status TypeError(const char* name, const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat("`", name, "` must be ", expected));
}

// A field's value; absent and JSON null both read as "not given", as OpenAI's API reads them.
const json* Field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<double>> Number(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return TypeError(name, "a number");
  return v->get<double>();
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) return TypeError(name, "an integer");
  return v->get<int64_t>();
}

absl::StatusOr<bool> Boolean(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return false;
  if (!v->is_boolean()) return TypeError(name, "true or false");
  return v->get<bool>();
}

absl::Status Unsupported(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(what, " is not supported by this server"));
}

// The OpenAI features this server does not offer, refused rather than silently ignored.
absl::Status RefuseUnsupported(const json& body, Endpoint endpoint) {
  ASSIGN_OR_RETURN(const std::optional<int64_t> best_of, Integer(body, "best_of"));
  if (best_of.has_value() && *best_of != 1) return Unsupported(absl::StrCat("best_of = ", *best_of));
  if (endpoint == Endpoint::kCompletions) {
    ASSIGN_OR_RETURN(const bool echo, Boolean(body, "echo"));
    if (echo) return Unsupported("`echo`");
    const json* suffix = Field(body, "suffix");
    if (suffix != nullptr && !(suffix->is_string() && suffix->get<std::string>().empty())) {
      return Unsupported("`suffix`");
    }
  } else {
    if (Field(body, "tools") != nullptr || Field(body, "response_format") != nullptr) {
      return Unsupported("`tools`/`response_format`");
    }
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    ASSIGN_OR_RETURN(const std::optional<double> value, Number(body, penalty));
    if (value.has_value() && *value != 0) return Unsupported(absl::StrCat("a non-zero `", penalty, "`"));
  }
  const json* logit_bias = Field(body, "logit_bias");
  if (logit_bias != nullptr && !(logit_bias->is_object() && logit_bias->empty())) return Unsupported("`logit_bias`");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> TokenIds(const json& array, const char* name) {
  std::vector<int32_t> ids;
  for (const json& id : array) {
    if (!id.is_number_integer() || id.get<int64_t>() < INT32_MIN || id.get<int64_t>() > INT32_MAX) {
      return TypeError(name, "a string, an array of token ids, or a one-element array of either");
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return ids;
}

// `prompt`: "text", [ids], ["text"] or [[ids]]. An empty string or array reaches the router, which
// refuses empty prompts.
absl::Status SetPrompt(const json& body, v1::GenerateRequest& request) {
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return absl::InvalidArgumentError("`prompt` is required");
  if (prompt->is_array() && !prompt->empty() && (prompt->front().is_string() || prompt->front().is_array())) {
    if (prompt->size() != 1) {
      return Unsupported(absl::StrFormat("a batch of %d prompts (send one request per prompt)", prompt->size()));
    }
    prompt = &prompt->front();
  }
  if (prompt->is_string()) {
    request.set_text(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt->is_array()) return TypeError("prompt", "a string, an array of token ids, or a one-element array of either");
  ASSIGN_OR_RETURN(const std::vector<int32_t> ids, TokenIds(*prompt, "prompt"));
  request.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  return absl::OkStatus();
}

int32_t ClampToInt32(int64_t value) { return static_cast<int32_t>(std::clamp<int64_t>(value, INT32_MIN, INT32_MAX)); }

// `logprobs` and `top_logprobs` in the endpoint's shape (openai_logprobs.h); the router checks the
// ranges they share (top_logprobs 0–20, only with logprobs), this the legacy API's own bound.
absl::Status SetLogprobs(const json& body, Endpoint endpoint, v1::SamplingParameters& s) {
  if (endpoint == Endpoint::kCompletions) {
    ASSIGN_OR_RETURN(const std::optional<int64_t> logprobs, Integer(body, "logprobs"));
    if (!logprobs.has_value()) return absl::OkStatus();
    if (*logprobs < 0 || *logprobs > kCompletionsMaxLogprobs) {
      return absl::InvalidArgumentError(absl::StrFormat("`logprobs` must be in [0, %d] on /v1/completions, got %d",
                                                        kCompletionsMaxLogprobs, *logprobs));
    }
    s.set_logprobs(true);
    s.set_top_logprobs(static_cast<int32_t>(*logprobs));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const bool logprobs, Boolean(body, "logprobs"));
  if (logprobs) s.set_logprobs(true);
  ASSIGN_OR_RETURN(const std::optional<int64_t> top_logprobs, Integer(body, "top_logprobs"));
  if (top_logprobs.has_value()) s.set_top_logprobs(ClampToInt32(*top_logprobs));
  return absl::OkStatus();
}

absl::Status SetSampling(const json& body, Endpoint endpoint, v1::SamplingParameters& s) {
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, Integer(body, "max_tokens"));
  if (endpoint == Endpoint::kChat) {
    ASSIGN_OR_RETURN(const std::optional<int64_t> max_completion, Integer(body, "max_completion_tokens"));
    if (max_completion.has_value()) max_tokens = max_completion;
  } else if (!max_tokens.has_value()) {
    max_tokens = kCompletionsDefaultMaxTokens;
  }
  if (max_tokens.has_value()) {
    // Clamped into int32 so that the router's own check reports the value as too large or small.
    s.set_max_new_tokens(ClampToInt32(*max_tokens));
  }
  ASSIGN_OR_RETURN(const std::optional<double> temperature, Number(body, "temperature"));
  if (temperature.has_value()) s.set_temperature(static_cast<float>(*temperature));
  ASSIGN_OR_RETURN(const std::optional<double> top_p, Number(body, "top_p"));
  if (top_p.has_value()) s.set_top_p(static_cast<float>(*top_p));
  ASSIGN_OR_RETURN(const std::optional<double> min_p, Number(body, "min_p"));
  if (min_p.has_value()) s.set_min_p(static_cast<float>(*min_p));
  ASSIGN_OR_RETURN(const std::optional<int64_t> top_k, Integer(body, "top_k"));
  // vLLM's clients send -1 for "off", which the engine spells 0.
  if (top_k.has_value()) s.set_top_k(*top_k == -1 ? 0 : ClampToInt32(*top_k));
  ASSIGN_OR_RETURN(const std::optional<int64_t> n, Integer(body, "n"));
  if (n.has_value()) s.set_n(ClampToInt32(*n));  // the router bounds it (RequestValidator::kMaxChoices)
  RETURN_IF_ERROR(SetLogprobs(body, endpoint, s));
  ASSIGN_OR_RETURN(const std::optional<int64_t> seed, Integer(body, "seed"));
  // OpenAI seeds are signed; the engine's are 64 bits of state: the same bits, reinterpreted.
  if (seed.has_value()) s.set_seed(static_cast<uint64_t>(*seed));
  ASSIGN_OR_RETURN(const bool ignore_eos, Boolean(body, "ignore_eos"));
  if (ignore_eos) s.set_ignore_eos(true);
  if (const json* stop = Field(body, "stop"); stop != nullptr) {
    if (stop->is_string()) {
      s.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& one : *stop) {
        if (!one.is_string()) return TypeError("stop", "a string or an array of strings");
        s.add_stop(one.get<std::string>());
      }
    } else {
      return TypeError("stop", "a string or an array of strings");
    }
  }
  if (const json* ids = Field(body, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) return TypeError("stop_token_ids", "an array of token ids");
    ASSIGN_OR_RETURN(const std::vector<int32_t> stop_ids, TokenIds(*ids, "stop_token_ids"));
    s.mutable_stop_token_ids()->Assign(stop_ids.begin(), stop_ids.end());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseRequest(Endpoint endpoint, const std::string& body_text,
                                           const std::string& served_model, const ChatTemplate& chat_template) {
  const json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  if (const json* model = Field(body, "model"); model != nullptr) {
    if (!model->is_string()) return TypeError("model", "a string");
    if (model->get<std::string>() != served_model) {
      return absl::NotFoundError(absl::StrCat("The model `", model->get<std::string>(),
                                              "` does not exist; this server serves `", served_model, "`"));
    }
  }
  RETURN_IF_ERROR(RefuseUnsupported(body, endpoint));
  OpenAiRequest request;
  request.endpoint = endpoint;
  if (endpoint == Endpoint::kCompletions) {
    RETURN_IF_ERROR(SetPrompt(body, request.generate));
  } else {
    const json* messages = Field(body, "messages");
    if (messages == nullptr) return absl::InvalidArgumentError("`messages` is required");
    ASSIGN_OR_RETURN(std::string prompt, chat_template.Render(*messages));
    request.generate.set_text(std::move(prompt));
    for (const std::string& stop : ChatTemplate::StopStrings()) request.generate.mutable_sampling()->add_stop(stop);
  }
  RETURN_IF_ERROR(SetSampling(body, endpoint, *request.generate.mutable_sampling()));
  ASSIGN_OR_RETURN(request.stream, Boolean(body, "stream"));
  if (const json* options = Field(body, "stream_options"); options != nullptr) {
    if (!options->is_object()) return TypeError("stream_options", "an object");
    if (!request.stream) return absl::InvalidArgumentError("`stream_options` is only allowed with `stream: true`");
    ASSIGN_OR_RETURN(request.include_usage, Boolean(*options, "include_usage"));
  }
  ASSIGN_OR_RETURN(request.return_token_ids, Boolean(body, "return_token_ids"));
  return request;
}

}  // namespace indexcache::openai
