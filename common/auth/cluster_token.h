// The internal plane's shared secret: every router ⇄ worker RPC and every handoff connection proves
// it holds the cluster token (docs/security.md, "The internal plane"). gRPC calls carry it as
// `authorization: Bearer <token>` (grpc_token.h); the TCP and NCCL handoff connections answer a
// challenge with HMAC-SHA256(token, nonce ‖ context) instead, so the secret never crosses the wire.
//
//   ASSIGN_OR_RETURN(ClusterToken token, ClusterToken::FromFile("/run/secrets/cluster-token"));
//   if (!token.Matches(presented)) return Unauthenticated(...);   // constant time
//
// A default-constructed token is *none*: the components given one check nothing. Services refuse to
// start with none unless told so explicitly (--insecure-internal-plane), which logs a warning.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace indexcache {

class ClusterToken {
 public:
  // Bytes of a fresh token's randomness (GenerateSecret), and the least a token file may hold.
  static constexpr size_t kSecretBytes = 32;
  // Bytes of a challenge nonce and of its HMAC-SHA256 answer.
  static constexpr size_t kNonceBytes = 32;
  static constexpr size_t kResponseBytes = 32;

  ClusterToken() = default;  // none: nothing is checked
  // INVALID_ARGUMENT when `secret` is shorter than kSecretBytes (whitespace is not part of it).
  static absl::StatusOr<ClusterToken> FromSecret(absl::string_view secret);
  // The file's first line. Read from a file, never a flag, so that it shows in no process listing.
  static absl::StatusOr<ClusterToken> FromFile(const std::string& path);
  // kSecretBytes from the OpenSSL CSPRNG as lower-case hex: what `cluster up` writes.
  static absl::StatusOr<std::string> GenerateSecret();
  // kNonceBytes from the OpenSSL CSPRNG.
  static absl::StatusOr<std::string> NewNonce();

  bool enabled() const { return !secret_.empty(); }
  const std::string& secret() const { return secret_; }

  // Whether `presented` is the secret, in time independent of where they differ. False when none.
  bool Matches(absl::string_view presented) const;
  // HMAC-SHA256(secret, nonce ‖ context): a handoff connection's answer to the receiver's challenge.
  // `context` names the channel, so an answer for one kind of connection is no answer for another.
  std::string Respond(absl::string_view nonce, absl::string_view context) const;
  // Whether `response` is Respond(nonce, context), in constant time. False when none.
  bool CheckResponse(absl::string_view nonce, absl::string_view context, absl::string_view response) const;

 private:
  std::string secret_;
};

// What a service starting its internal plane checks: OK with a token; with none, INVALID_ARGUMENT
// naming --cluster-token-file unless `insecure` (--insecure-internal-plane) says so explicitly, which
// logs a warning that `who`'s internal plane accepts anyone.
absl::Status RequireClusterToken(const ClusterToken& token, bool insecure, absl::string_view who);

// Constant-time equality of two byte strings (CRYPTO_memcmp); the lengths are not secret.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace indexcache
