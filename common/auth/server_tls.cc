#include "common/auth/server_tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include "absl/strings/str_cat.h"
#include "common/auth/openssl_objects.h"
#include "common/util/read_file.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// The first certificate of `pem`; INVALID_ARGUMENT naming `path` when there is none.
absl::StatusOr<openssl::Certificate> FirstCertificate(const std::string& pem, const std::string& path) {
  openssl::Certificate certificate(PEM_read_bio_X509(openssl::ReadOnlyBio(pem).get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (certificate == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no PEM certificate"));
  }
  return certificate;
}

}  // namespace

absl::StatusOr<ServerTls> ServerTls::FromFiles(const std::string& certificate_file,
                                               const std::string& private_key_file,
                                               const std::string& client_ca_file) {
  ServerTls tls;
  ASSIGN_OR_RETURN(tls.certificate_chain, ReadWholeFile(certificate_file, "TLS certificate"));
  ASSIGN_OR_RETURN(tls.private_key, ReadWholeFile(private_key_file, "TLS private key"));
  ASSIGN_OR_RETURN(const openssl::Certificate certificate, FirstCertificate(tls.certificate_chain, certificate_file));
  // No passphrase: OpenSSL's default would ask the terminal for one.
  pem_password_cb* no_passphrase = [](char*, int, int, void*) { return 0; };
  const openssl::Key key(
      PEM_read_bio_PrivateKey(openssl::ReadOnlyBio(tls.private_key).get(), nullptr, no_passphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(private_key_file, " holds no PEM private key (an encrypted key is not read)"));
  }
  const bool matches = X509_check_private_key(certificate.get(), key.get()) == 1;
  ERR_clear_error();
  if (!matches) {
    return absl::InvalidArgumentError(absl::StrCat("the TLS private key ", private_key_file,
                                                   " is not the key of the certificate ", certificate_file));
  }
  if (!client_ca_file.empty()) {
    ASSIGN_OR_RETURN(tls.client_ca, ReadWholeFile(client_ca_file, "TLS client CA"));
    RETURN_IF_ERROR(FirstCertificate(tls.client_ca, client_ca_file).status());
  }
  return tls;
}

std::shared_ptr<grpc::ServerCredentials> PublicServerCredentials(const std::optional<ServerTls>& tls) {
  if (!tls.has_value()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(tls->client_ca.empty()
                                                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls->client_ca;
  options.pem_key_cert_pairs.push_back({tls->private_key, tls->certificate_chain});
  return grpc::SslServerCredentials(options);
}

}  // namespace indexcache
