#include "common/auth/cluster_token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/auth/secrets.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

absl::StatusOr<std::string> RandomBytes(size_t n) {
  std::string bytes(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(n)) != 1) {
    return absl::InternalError("OpenSSL's RAND_bytes failed: no randomness for the cluster token");
  }
  return bytes;
}

}  // namespace

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<ClusterToken> ClusterToken::FromSecret(absl::string_view secret) {
  secret = absl::StripAsciiWhitespace(secret);
  if (secret.size() < kSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a cluster token needs at least ", kSecretBytes,
                                                   " characters, got ", secret.size()));
  }
  ClusterToken token;
  token.secret_ = std::string(secret);
  return token;
}

absl::StatusOr<ClusterToken> ClusterToken::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string line, ReadSecretFile(path, "cluster token"));
  absl::StatusOr<ClusterToken> token = FromSecret(line);
  if (!token.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", token.status().message()));
  return token;
}

absl::StatusOr<std::string> ClusterToken::GenerateSecret() {
  absl::StatusOr<std::string> bytes = RandomBytes(kSecretBytes);
  if (!bytes.ok()) return bytes.status();
  return absl::BytesToHexString(*bytes);
}

absl::StatusOr<std::string> ClusterToken::NewNonce() { return RandomBytes(kNonceBytes); }

absl::Status RequireClusterToken(const ClusterToken& token, bool insecure, absl::string_view who) {
  if (token.enabled()) return absl::OkStatus();
  if (!insecure) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", who, " needs the cluster token of its internal plane (--cluster-token-file FILE); "
        "--insecure-internal-plane runs it without authentication"));
  }
  IC_LOG(Warning) << "INSECURE: the " << who << " runs its internal plane WITHOUT AUTHENTICATION "
                  << "(--insecure-internal-plane): anyone who reaches its ports can register workers, "
                  << "push or pull KV and end requests. Never do this outside a test.";
  return absl::OkStatus();
}

bool ClusterToken::Matches(absl::string_view presented) const {
  return enabled() && ConstantTimeEquals(presented, secret_);
}

std::string ClusterToken::Respond(absl::string_view nonce, absl::string_view context) const {
  const std::string message = absl::StrCat(nonce, context);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_bytes = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_bytes);
  return std::string(reinterpret_cast<const char*>(mac), mac_bytes);
}

bool ClusterToken::CheckResponse(absl::string_view nonce, absl::string_view context,
                                 absl::string_view response) const {
  return enabled() && ConstantTimeEquals(response, Respond(nonce, context));
}

}  // namespace indexcache
