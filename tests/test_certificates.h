// Certificates made in the test, with OpenSSL's libcrypto: a certificate authority of its own (P-256,
// SHA-256, valid from an hour ago for a day) and certificates it issues for localhost and 127.0.0.1,
// written to PEM files as the services and clients read them.
//
//   const PemIdentity ca = MakeCertificateAuthority("test CA");
//   const PemIdentity server = IssueCertificate(ca, "router");
//   options.tls = *ServerTls::FromFiles(WriteTestFile("server.crt", server.certificate), ...);
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/auth/openssl_objects.h"

namespace indexcache::testing {

// A certificate and its private key, PEM.
struct PemIdentity {
  std::string certificate;
  std::string private_key;
};

namespace certificates_internal {

using openssl::Bio;
using openssl::Certificate;
using openssl::Key;

// Test set-up that cannot fail but for a broken OpenSSL: a failure throws, which fails the test.
inline void Require(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("making a test certificate: ") + what);
}

inline std::string Drain(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(size));
}

inline void AddExtension(X509* certificate, X509* issuer, int nid, const char* value) {
  X509V3_CTX context;
  X509V3_set_ctx(&context, issuer, certificate, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value);
  Require(extension != nullptr && X509_add_ext(certificate, extension, -1) == 1, "extension");
  X509_EXTENSION_free(extension);
}

// A certificate for `common_name` with a fresh key, signed by `issuer` (itself when null).
inline PemIdentity Make(const std::string& common_name, const PemIdentity* issuer) {
  Key key(EVP_EC_gen("P-256"));
  Require(key != nullptr, "key");
  Certificate certificate(X509_new());
  Require(X509_set_version(certificate.get(), 2) == 1, "version");
  unsigned char serial[16];
  Require(RAND_bytes(serial, sizeof(serial)) == 1, "serial");
  serial[0] &= 0x7f;  // positive
  BIGNUM* serial_number = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(serial_number, X509_get_serialNumber(certificate.get()));
  BN_free(serial_number);
  X509_gmtime_adj(X509_getm_notBefore(certificate.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(certificate.get()), 24 * 3600);
  X509_NAME* subject = X509_get_subject_name(certificate.get());
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  Require(X509_set_pubkey(certificate.get(), key.get()) == 1, "public key");

  Certificate issuer_certificate;
  Key signing_key;
  if (issuer != nullptr) {
    issuer_certificate.reset(PEM_read_bio_X509(openssl::ReadOnlyBio(issuer->certificate).get(), nullptr, nullptr, nullptr));
    signing_key.reset(PEM_read_bio_PrivateKey(openssl::ReadOnlyBio(issuer->private_key).get(), nullptr, nullptr, nullptr));
    Require(issuer_certificate != nullptr && signing_key != nullptr, "issuer");
  }
  X509* signer = issuer != nullptr ? issuer_certificate.get() : certificate.get();
  X509_set_issuer_name(certificate.get(), X509_get_subject_name(signer));
  AddExtension(certificate.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer == nullptr) {
    AddExtension(certificate.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(certificate.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExtension(certificate.get(), signer, NID_authority_key_identifier, "keyid");
    AddExtension(certificate.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(certificate.get(), signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  }
  Require(X509_sign(certificate.get(), issuer != nullptr ? signing_key.get() : key.get(), EVP_sha256()) > 0, "sign");

  Bio certificate_pem(BIO_new(BIO_s_mem()));
  Bio key_pem(BIO_new(BIO_s_mem()));
  Require(PEM_write_bio_X509(certificate_pem.get(), certificate.get()) == 1, "certificate PEM");
  Require(PEM_write_bio_PrivateKey(key_pem.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1, "key PEM");
  return {Drain(certificate_pem.get()), Drain(key_pem.get())};
}

}  // namespace certificates_internal

// A self-signed certificate authority named `common_name`.
inline PemIdentity MakeCertificateAuthority(const std::string& common_name) {
  return certificates_internal::Make(common_name, nullptr);
}

// A certificate for localhost and 127.0.0.1, named `common_name`, signed by `ca`: a server's or a
// client's.
inline PemIdentity IssueCertificate(const PemIdentity& ca, const std::string& common_name) {
  return certificates_internal::Make(common_name, &ca);
}

// Writes `contents` to a file named `name` in a directory of this process's own; returns its path.
inline std::string WriteTestFile(const std::string& name, const std::string& contents) {
  const char* tmp = std::getenv("TMPDIR");
  const std::filesystem::path directory = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") /
                                          ("indexcache-test-certificates-" + std::to_string(getpid()));
  std::filesystem::create_directories(directory);
  const std::filesystem::path path = directory / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
  return path.string();
}

}  // namespace indexcache::testing
