#include "call_status.h"

#include "absl/strings/str_cat.h"

namespace indexcache::client {

absl::Status CallStatus(const grpc::Status& status, const std::string& call, const std::string& address,
                        std::optional<absl::Duration> timeout) {
  if (status.ok()) return absl::OkStatus();
  const int raw = static_cast<int>(status.error_code());
  const auto code = raw >= 0 && raw <= static_cast<int>(absl::StatusCode::kUnauthenticated)
                        ? static_cast<absl::StatusCode>(raw)
                        : absl::StatusCode::kUnknown;
  std::string detail = status.error_message();
  if (code == absl::StatusCode::kDeadlineExceeded && timeout) {
    detail = absl::StrCat("deadline of ", absl::FormatDuration(*timeout), " exceeded (", detail, ")");
  }
  return absl::Status(code, absl::StrCat(call, " on ", address, ": ", detail));
}

}  // namespace indexcache::client
