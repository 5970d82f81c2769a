// The HTTP/1.1 transport of the OpenAI-compatible API (Boost.Beast), HTTPS with a TLS identity
// (OpenSSL through Boost.Asio, the router's --tls-cert-file and --tls-key-file): accepts connections on a
// thread of its own and serves each connection on a thread of its own with blocking reads and
// writes, as the router's synchronous gRPC server holds one thread per Generate call anyway. The
// routes are OpenAiApi's (openai_api.h); streamed responses are chunked server-sent events.
//
//   ASSIGN_OR_RETURN(auto api, OpenAiApi::Create(options, server->InProcessChannel({})));
//   ASSIGN_OR_RETURN(auto http, OpenAiServer::Start("0.0.0.0:8000", std::move(api)));
//   http->address();   // "127.0.0.1:8000"
//   http.reset();      // closes every connection, cancelling what runs on them
//
// Limits: request headers 16 KiB, bodies 8 MiB (413 beyond), `max_connections` open connections
// (503 beyond; over TLS the connection is closed instead), a keep-alive connection idle for 60 s is
// closed, and so is one that has not begun its TLS handshake within 60 s.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/auth/server_tls.h"
#include "services/openai/openai_api.h"

namespace indexcache::openai {

class OpenAiServer {
 public:
  // With `tls`, serves HTTPS only (a plain HTTP client is closed at the handshake).
  static absl::StatusOr<std::unique_ptr<OpenAiServer>> Start(const std::string& listen_address,
                                                             std::unique_ptr<OpenAiApi> api,
                                                             const std::optional<ServerTls>& tls = std::nullopt,
                                                             int max_connections = 1024);
  // Stops accepting, shuts every connection down (their generations are cancelled) and waits for
  // their threads.
  ~OpenAiServer();
  OpenAiServer(const OpenAiServer&) = delete;
  OpenAiServer& operator=(const OpenAiServer&) = delete;

  // "host:port" bound (a wildcard host reads as 127.0.0.1).
  const std::string& address() const;

 private:
  class Impl;
  explicit OpenAiServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace indexcache::openai
