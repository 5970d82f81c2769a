#include "services/router/request_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

constexpr size_t kMaxLabel = 64;
constexpr size_t kRandomBytes = 16;  // 128 bits: the UUIDv4 bar is 122

bool LabelChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == ':' || c == '-';
}

}  // namespace

absl::Status ValidateRequestLabel(absl::string_view label) {
  if (label.size() > kMaxLabel) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request_id is %d characters long; at most %d are allowed", label.size(), kMaxLabel));
  }
  for (size_t i = 0; i < label.size(); ++i) {
    if (!LabelChar(label[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request_id has byte 0x%02x at %d; allowed are letters, digits and . _ : -",
          static_cast<unsigned char>(label[i]), i));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> NewRequestId(absl::string_view label) {
  uint8_t bytes[kRandomBytes];
  size_t got = 0;
  while (got < kRandomBytes) {
    const ssize_t n = getrandom(bytes + got, kRandomBytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    got += static_cast<size_t>(n);
  }
  std::string hex;
  for (uint8_t b : bytes) absl::StrAppendFormat(&hex, "%02x", b);
  return label.empty() ? hex : absl::StrCat(label, "-", hex);
}

}  // namespace indexcache
