// A server's TLS identity on the public API (the router's `--tls-cert-file`, `--tls-key-file` and
// `--tls-client-ca-file`): its certificate chain and private key, PEM, checked at load to parse and to
// belong together, so that a wrong file stops the server at start with a message naming it, not at
// the first handshake. gRPC serves it through SslServerCredentials (PublicServerCredentials), the
// HTTP API through OpenSSL in Boost.Asio (services/openai/openai_server.h).
//
//   ASSIGN_OR_RETURN(ServerTls tls, ServerTls::FromFiles("tls.crt", "tls.key", /*client_ca_file=*/""));
//   builder.AddListeningPort(address, PublicServerCredentials(tls));
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace indexcache {

struct ServerTls {
  // PEM: the server's certificate first, then any intermediates up to (not including) the root.
  std::string certificate_chain;
  // PEM: the private key of the chain's first certificate.
  std::string private_key;
  // PEM: the CAs a client's certificate must chain to (mutual TLS); empty: clients show none.
  std::string client_ca;

  // Reads and checks the files: INVALID_ARGUMENT naming the file that is unreadable or holds no PEM
  // certificate or key, or saying that the key is not the certificate's.
  static absl::StatusOr<ServerTls> FromFiles(const std::string& certificate_file, const std::string& private_key_file,
                                             const std::string& client_ca_file);
};

// The public listener's credentials: TLS with `tls` (requiring and verifying a client certificate
// when it has a client CA), plaintext without.
std::shared_ptr<grpc::ServerCredentials> PublicServerCredentials(const std::optional<ServerTls>& tls);

}  // namespace indexcache
