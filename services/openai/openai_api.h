// The OpenAI-compatible API's routes, independent of the HTTP transport (openai_server.h):
//
//   GET  /health                 200 {"status": "ok"} while the router's grpc.health.v1 says SERVING, else 503
//   GET  /v1/models              the served model: id (the model directory's name), context length, the
//                                IndexCache pattern and which chat template is used (chat_template.h)
//   POST /v1/completions         a completion (n choices, logprobs when asked), streamed as server-sent
//                                events with "stream": true (each chunk names its choice's `index`)
//   POST /v1/chat/completions    the same for chat messages
//
// Every request is a call on the router's own gRPC services through an in-process channel — Generate,
// ModelInfo, Check — so HTTP and gRPC clients share one validation, admission, dispatch, metrics and
// cancellation path; nothing here reaches into the router. With an API key set, the /v1 routes need
// `Authorization: Bearer <key>` (401 otherwise); /health stays open for probes.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "indexcache/v1/generate.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "common/tokenizer/bpe_tokenizer.h"
#include "services/openai/chat_template.h"
#include "services/openai/openai_logprobs.h"
#include "services/openai/openai_request.h"

namespace indexcache::openai {

// What the transport offers a route for one request. The Send calls return false once the client
// is gone.
class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  virtual bool SendJson(int status, const nlohmann::json& body) = 0;
  // 200 with Content-Type text/event-stream; then events, each "data: <payload>\n\n"; then the end.
  virtual bool StartEvents() = 0;
  virtual bool SendEvent(const std::string& payload) = 0;
  virtual bool EndEvents() = 0;
  // The connection's socket, watched for a hang-up while a generation runs (hangup_watch.h).
  virtual int socket_fd() const = 0;
};

struct HttpRequest {
  std::string method;         // "GET", "POST", …
  std::string target;         // "/v1/completions?x=y"
  std::string authorization;  // the Authorization header, "" when absent
  std::string body;
};

struct OpenAiOptions {
  std::string model_dir;  // its name is the model id; its tokenizer_config.json names a chat template
  std::string api_key;    // empty: no authentication
};

class OpenAiApi {
 public:
  // `router` is a channel to the router's own services (grpc::Server::InProcessChannel).
  static absl::StatusOr<std::unique_ptr<OpenAiApi>> Create(OpenAiOptions options,
                                                           std::shared_ptr<grpc::Channel> router);

  // Answers one request on `exchange`; every outcome, errors included, is written there.
  void Handle(const HttpRequest& request, HttpExchange& exchange) const;

  const std::string& model_id() const { return model_id_; }

 private:
  OpenAiApi(OpenAiOptions options, std::shared_ptr<grpc::Channel> router, ChatTemplate chat_template,
            std::unique_ptr<BpeTokenizer> tokenizer);
  bool Authorized(const std::string& authorization) const;
  // Adds the API key, when there is one, to a call to the router's gRPC API.
  void PresentApiKey(grpc::ClientContext& call) const;
  void Health(HttpExchange& exchange) const;
  void Models(HttpExchange& exchange) const;
  void Generate(const OpenAiRequest& request, HttpExchange& exchange) const;

  const OpenAiOptions options_;
  const std::shared_ptr<grpc::Channel> router_;
  const std::unique_ptr<v1::IndexCache::Stub> stub_;
  const ChatTemplate chat_template_;
  const std::unique_ptr<BpeTokenizer> tokenizer_;  // null without tokenizer.json: tokens read "token_id:N"
  const LogprobsFormatter logprobs_;
  const std::string model_id_;
  const int64_t created_;  // /v1/models' `created`: when this server started
};

}  // namespace indexcache::openai
