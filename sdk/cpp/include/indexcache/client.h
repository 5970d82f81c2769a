// C++ client of an indexcache cluster: one router address, the public indexcache.v1 API.
//
//   ASSIGN_OR_RETURN(auto client, Client::Connect("127.0.0.1:7000", {}));
//   auto request = GenerateRequest::FromText("The capital of France is");
//   request.sampling.max_new_tokens = 16;
//   ASSIGN_OR_RETURN(GenerateResult result, client.Generate(request));
//
// Errors are absl statuses carrying the gRPC code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE,
// DEADLINE_EXCEEDED, CANCELLED, ...) and a message naming the call and the router. A stream that the
// server ends with a final message is a success whatever its finish reason (stop, length, abort,
// error): the reason and the server's error text are in FinalInfo.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "indexcache/client_types.h"

namespace indexcache::client {

// TLS to a router that serves it (its --tls-cert-file): the router's certificate is verified against
// the CA certificates and must name the host dialled (or `server_name`).
struct TlsOptions {
  // The CA certificates to trust, PEM: `ca_certificates_pem` itself, or read from `ca_certificates_file`
  // (at most one of the two); both empty: the system's roots.
  std::string ca_certificates_pem;
  std::string ca_certificates_file;
  // The name the certificate must carry instead of the address's host (an IP address dialled, a
  // certificate issued for a DNS name); empty: the host.
  std::string server_name;
  // For a router that requires client certificates (its --tls-client-ca-file): this client's
  // certificate chain and private key, PEM files; both or neither.
  std::string client_certificate_file;
  std::string client_key_file;
};

struct ClientOptions {
  // Deadline of every call that does not set its own; unset: none.
  std::optional<absl::Duration> default_timeout;
  // Connect() waits this long for the channel to be ready and fails with UNAVAILABLE otherwise;
  // unset: it returns at once and the first call connects.
  std::optional<absl::Duration> connect_timeout;
  // The router's API key (its --api-key-file), sent as `authorization: Bearer <key>` on every call;
  // empty: none.
  std::string api_key;
  // Unset: plaintext.
  std::optional<TlsOptions> tls;
};

// One Generate call being read chunk by chunk. Move-only; destroying an unfinished stream cancels it.
class GenerateStream {
 public:
  GenerateStream(GenerateStream&&) noexcept;
  GenerateStream& operator=(GenerateStream&&) noexcept;
  ~GenerateStream();

  // Blocks for the next chunk. std::nullopt: the stream ended normally (the final chunk was already
  // returned). An error: the call failed (CANCELLED after Cancel(), DEADLINE_EXCEEDED, the server's
  // status, or INTERNAL if the server ended without a final message); Next() keeps returning it.
  absl::StatusOr<std::optional<GenerateChunk>> Next();

  // Ends the call from any thread, also while another thread is blocked in Next(); the server sees
  // the cancellation and frees the request. Idempotent.
  void Cancel();

  // The id the router gave the request, from the first chunk (sent at admission); empty before. Abort
  // takes this id: the caller's label alone finds nothing (docs/security.md).
  const std::string& request_id() const;

 private:
  struct State;
  friend class Client;
  explicit GenerateStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Thread-safe and cheap to copy: copies share one gRPC channel.
class Client {
 public:
  static absl::StatusOr<Client> Connect(std::string router_address, ClientOptions options = {});

  // Runs the request to its end and concatenates every chunk.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request) const;

  // Starts the request; read it with Next(). Failures to start show up on the first Next().
  GenerateStream Stream(const GenerateRequest& request) const;

  // Aborts a request by id (its stream ends with finish reason abort). Returns whether the router
  // knew the id.
  absl::StatusOr<bool> Abort(const std::string& request_id) const;

  absl::StatusOr<ModelInfo> GetModelInfo() const;

  const std::string& router_address() const;

 private:
  struct Impl;
  explicit Client(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace indexcache::client
