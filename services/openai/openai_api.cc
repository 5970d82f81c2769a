#include "services/openai/openai_api.h"

#include <filesystem>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/auth/secrets.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/common/health_client.h"
#include "services/common/status_conversion.h"
#include "services/openai/hangup_watch.h"
#include "services/openai/openai_error.h"
#include "services/openai/openai_response.h"

namespace indexcache::openai {
namespace {

using nlohmann::json;

bool SendError(HttpExchange& exchange, const absl::Status& status, const char* code = nullptr) {
  return exchange.SendJson(HttpStatusOf(status.code()), ErrorBody(status, code));
}

std::string ModelId(const std::string& model_dir) {
  std::filesystem::path path(model_dir);
  if (!path.has_filename()) path = path.parent_path();  // "models/x/" names x
  return path.filename().string();
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenAiApi>> OpenAiApi::Create(OpenAiOptions options, std::shared_ptr<grpc::Channel> router) {
  if (router == nullptr) return absl::InvalidArgumentError("the OpenAI API needs a channel to the router");
  ASSIGN_OR_RETURN(ChatTemplate chat_template, ChatTemplate::Load(options.model_dir));
  std::unique_ptr<BpeTokenizer> tokenizer;
  const std::string tokenizer_path = options.model_dir + "/tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) {
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> loaded = BpeTokenizer::FromFile(tokenizer_path);
    if (!loaded.ok()) return Annotate(loaded.status(), "loading the tokenizer the logprobs' token strings come from");
    tokenizer = *std::move(loaded);
  }
  return std::unique_ptr<OpenAiApi>(
      new OpenAiApi(std::move(options), std::move(router), std::move(chat_template), std::move(tokenizer)));
}

OpenAiApi::OpenAiApi(OpenAiOptions options, std::shared_ptr<grpc::Channel> router, ChatTemplate chat_template,
                     std::unique_ptr<BpeTokenizer> tokenizer)
    : options_(std::move(options)),
      router_(std::move(router)),
      stub_(v1::IndexCache::NewStub(router_)),
      chat_template_(std::move(chat_template)),
      tokenizer_(std::move(tokenizer)),
      logprobs_(tokenizer_.get()),
      model_id_(ModelId(options_.model_dir)),
      created_(absl::ToUnixSeconds(absl::Now())) {}

bool OpenAiApi::Authorized(const std::string& authorization) const {
  if (options_.api_key.empty()) return true;
  // In time independent of where they differ, so response times reveal nothing of the key.
  return BearerMatches(authorization, options_.api_key);
}

void OpenAiApi::PresentApiKey(grpc::ClientContext& call) const {
  // The HTTP client proved the key (Authorized); the router's gRPC API asks for it again.
  if (!options_.api_key.empty()) call.AddMetadata("authorization", BearerValue(options_.api_key));
}

void OpenAiApi::Handle(const HttpRequest& request, HttpExchange& exchange) const {
  const std::string path = request.target.substr(0, request.target.find('?'));
  const auto method_is = [&](const char* method) {
    if (request.method == method) return true;
    SendError(exchange, absl::InvalidArgumentError(absl::StrCat(path, " takes ", method, ", not ", request.method)),
              "method_not_allowed");
    return false;
  };
  std::optional<Endpoint> endpoint;
  if (path == "/v1/completions") endpoint = Endpoint::kCompletions;
  if (path == "/v1/chat/completions") endpoint = Endpoint::kChat;
  if (path == "/health") {
    if (method_is("GET")) Health(exchange);
    return;
  }
  if (!endpoint.has_value() && path != "/v1/models") {
    SendError(exchange, absl::NotFoundError(absl::StrCat("no route ", path, ": this server serves /v1/completions, "
                                                         "/v1/chat/completions, /v1/models and /health")),
              "unknown_url");
    return;
  }
  if (!Authorized(request.authorization)) {
    SendError(exchange, absl::UnauthenticatedError("a valid API key is required: `Authorization: Bearer <key>`"),
              "invalid_api_key");
    return;
  }
  if (!endpoint.has_value()) {
    if (method_is("GET")) Models(exchange);
    return;
  }
  if (!method_is("POST")) return;
  absl::StatusOr<OpenAiRequest> parsed = ParseRequest(*endpoint, request.body, model_id_, chat_template_);
  if (!parsed.ok()) {
    SendError(exchange, parsed.status(), absl::IsNotFound(parsed.status()) ? "model_not_found" : nullptr);
    return;
  }
  Generate(*parsed, exchange);
}

void OpenAiApi::Health(HttpExchange& exchange) const {
  const absl::Status health = CheckHealth(router_, absl::Seconds(2));
  if (health.ok()) {
    exchange.SendJson(200, {{"status", "ok"}});
  } else {
    SendError(exchange, health);
  }
}

void OpenAiApi::Models(HttpExchange& exchange) const {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  PresentApiKey(context);
  v1::ModelInfoResponse info;
  const grpc::Status status = stub_->ModelInfo(&context, v1::ModelInfoRequest(), &info);
  if (!status.ok()) {
    SendError(exchange, FromGrpcStatus(status));
    return;
  }
  json model = {{"id", model_id_},
                {"object", "model"},
                {"created", created_},
                {"owned_by", "indexcache"},
                {"max_model_len", info.max_context()},
                {"architecture", info.architecture()},
                {"index_pattern", info.index_pattern()},
                {"chat_template", chat_template_.source()}};
  if (!chat_template_.note().empty()) model["chat_template_note"] = chat_template_.note();
  exchange.SendJson(200, {{"object", "list"}, {"data", json::array({std::move(model)})}});
}

namespace {

// One choice's progress through the router's stream.
struct ChoiceState {
  ChoicePart whole;              // non-streamed: everything so far (logprobs formatted at the end)
  TokenLogprobsList logprobs;    // non-streamed: every token's
  int64_t text_offset = 0;       // streamed completions: where the next chunk's tokens start
  bool started = false;          // streamed: its first chunk went out
  std::optional<v1::FinalInfo> final;
};

}  // namespace

void OpenAiApi::Generate(const OpenAiRequest& request, HttpExchange& exchange) const {
  grpc::ClientContext call;
  PresentApiKey(call);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&call, request.generate);
  ResponseHeader header{request.endpoint, "", model_id_, absl::ToUnixSeconds(absl::Now()), request.return_token_ids};
  const v1::SamplingParameters& sampling = request.generate.sampling();
  const bool logprobs = sampling.logprobs();
  const bool chat = request.endpoint == Endpoint::kChat;
  // The client's n sizes nothing here: the router refuses one out of range before its first message,
  // and `choices` grows as the router's messages name them.
  const int n = sampling.has_n() ? sampling.n() : 1;
  std::vector<ChoiceState> choices;
  absl::Status status;
  bool streaming = false;  // the event stream's 200 went out: errors from now on are events
  bool client_gone = false;
  {
    const HangupWatch watch(exchange.socket_fd(), &call);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
      if (header.request_id.empty()) header.request_id = message.request_id();
      if (message.index() < 0 || message.index() >= n) {
        status = absl::InternalError(absl::StrCat("the router sent choice ", message.index(), " of ", n));
        call.TryCancel();
        break;
      }
      while (static_cast<int>(choices.size()) <= message.index()) {
        const int index = static_cast<int>(choices.size());
        choices.emplace_back().whole.index = index;
      }
      ChoiceState& choice = choices[message.index()];
      if (message.has_final()) choice.final = message.final();
      if (!request.stream) {
        choice.whole.text += message.text();
        choice.whole.token_ids.insert(choice.whole.token_ids.end(), message.token_ids().begin(),
                                      message.token_ids().end());
        choice.logprobs.MergeFrom(message.logprobs());
        continue;
      }
      const bool first_event = !streaming;
      if (first_event && !exchange.StartEvents()) {
        client_gone = true;
        break;
      }
      streaming = true;
      // The request id's message belongs to no choice's text: it only opens the stream.
      if (message.token_ids_size() == 0 && message.text().empty() && !message.has_final()) continue;
      ChoicePart part{message.index(), message.text(), {message.token_ids().begin(), message.token_ids().end()}, nullptr};
      if (logprobs) {
        part.logprobs = chat ? logprobs_.Chat(message.logprobs())
                             : logprobs_.Completions(message.logprobs(), choice.text_offset, &choice.text_offset);
      }
      const bool first = !choice.started;
      bool sent = true;
      // Chunks whose tokens hold no text yet (a stop string's prefix, half a UTF-8 character) wait
      // for the text, unless they carry what the client asked to see per token; a chat choice's first
      // chunk goes out anyway, with the role.
      if (!part.text.empty() || (first && chat) || ((request.return_token_ids || logprobs) && !part.token_ids.empty())) {
        sent = exchange.SendEvent(Dump(ChunkBody(header, part, first, std::nullopt)));
        choice.started = true;
      }
      if (sent && message.has_final() && message.final().finish_reason() != v1::ERROR) {
        const ChoicePart end{message.index(), "", {}, nullptr};
        sent = exchange.SendEvent(Dump(ChunkBody(header, end, !choice.started, FinishReasonName(message.final().finish_reason()))));
        choice.started = true;
      }
      if (!sent) {
        client_gone = true;
        break;
      }
    }
    if (client_gone) call.TryCancel();
    client_gone = client_gone || watch.hung_up();
  }
  const absl::Status finished = FromGrpcStatus(reader->Finish());
  if (status.ok()) status = finished;
  if (client_gone) {
    IC_LOG(Info) << "HTTP client of request " << header.request_id << " went away: request cancelled";
    return;
  }
  if (status.ok() && static_cast<int>(choices.size()) != n) {
    status = absl::InternalError(absl::StrCat("the router's stream ended with ", choices.size(), " of ", n, " choices"));
  }
  std::vector<v1::FinalInfo> finals;
  for (const ChoiceState& choice : choices) {
    if (!status.ok()) break;
    if (!choice.final.has_value()) {
      status = absl::InternalError("the router's stream ended without a choice's final message");
    } else if (choice.final->finish_reason() == v1::ERROR) {
      status = absl::InternalError(choice.final->error());
    } else {
      finals.push_back(*choice.final);
    }
  }
  if (!streaming) {
    if (!status.ok()) {
      SendError(exchange, status);
      return;
    }
    std::vector<ChoicePart> parts;
    for (ChoiceState& choice : choices) {
      if (logprobs) {
        choice.whole.logprobs =
            chat ? logprobs_.Chat(choice.logprobs) : logprobs_.Completions(choice.logprobs, 0, nullptr);
      }
      parts.push_back(std::move(choice.whole));
    }
    exchange.SendJson(200, CompletionBody(header, parts, finals));
    return;
  }
  // After the 200, a failure can only be told in the stream: an error event, as vLLM sends.
  if (!status.ok() && !exchange.SendEvent(Dump(ErrorBody(status)))) return;
  if (status.ok() && request.include_usage && !exchange.SendEvent(Dump(UsageChunkBody(header, finals)))) return;
  if (exchange.SendEvent("[DONE]")) exchange.EndEvents();
}

}  // namespace indexcache::openai
