#include "common/auth/secrets.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/auth/cluster_token.h"

namespace indexcache {

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " from ", path));
  std::string secret(absl::StripAsciiWhitespace(line));
  if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat("the ", what, " file ", path, " starts with an empty line"));
  return secret;
}

namespace {

constexpr absl::string_view kScheme = "Bearer ";

}  // namespace

std::string BearerValue(absl::string_view secret) { return absl::StrCat(kScheme, secret); }

std::optional<absl::string_view> BearerSecret(absl::string_view authorization) {
  if (!absl::StartsWith(authorization, kScheme)) return std::nullopt;
  return authorization.substr(kScheme.size());
}

bool BearerMatches(absl::string_view authorization, absl::string_view secret) {
  const std::optional<absl::string_view> presented = BearerSecret(authorization);
  return presented.has_value() && ConstantTimeEquals(*presented, secret);
}

}  // namespace indexcache
