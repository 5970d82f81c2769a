// Writes a test PKI into a directory for the tests that are not C++ (the Python SDK's): ca.crt, a
// router's certificate and key for localhost and 127.0.0.1 (router.crt, router.key) and a client's
// (client.crt, client.key), both issued by that CA, and another CA (other-ca.crt) that issued neither.
//
//   write_test_certificates DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/test_certificates.h"

int main(int argc, char** argv) {
  using ::indexcache::testing::IssueCertificate;
  using ::indexcache::testing::MakeCertificateAuthority;
  using ::indexcache::testing::PemIdentity;
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_test_certificates DIR\n");
    return 2;
  }
  const std::filesystem::path directory = argv[1];
  const PemIdentity ca = MakeCertificateAuthority("indexcache test CA");
  const PemIdentity router = IssueCertificate(ca, "router");
  const PemIdentity client = IssueCertificate(ca, "client");
  const PemIdentity other_ca = MakeCertificateAuthority("another CA");
  const std::pair<const char*, const std::string*> files[] = {
      {"ca.crt", &ca.certificate},         {"router.crt", &router.certificate}, {"router.key", &router.private_key},
      {"client.crt", &client.certificate}, {"client.key", &client.private_key}, {"other-ca.crt", &other_ca.certificate}};
  for (const auto& [name, contents] : files) {
    std::ofstream out(directory / name, std::ios::binary | std::ios::trunc);
    if (!(out << *contents)) {
      std::fprintf(stderr, "write_test_certificates: cannot write %s\n", (directory / name).c_str());
      return 1;
    }
  }
  return 0;
}
