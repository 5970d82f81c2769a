#include "common/auth/api_key.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace indexcache {

absl::StatusOr<std::string> ReadApiKeyFile(const std::string& path) {
  std::ifstream in(path);
  std::string key;
  if (!in || !std::getline(in, key)) return absl::InvalidArgumentError(absl::StrCat("cannot read the API key from ", path));
  key = std::string(absl::StripAsciiWhitespace(key));
  if (key.empty()) return absl::InvalidArgumentError(absl::StrCat("the API key file ", path, " starts with an empty line"));
  return key;
}

}  // namespace indexcache
