// A whole file's bytes, for small files read once at start (PEM certificates and keys).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace indexcache {

// INVALID_ARGUMENT "cannot read the <what> from <path>" when the file cannot be opened or read.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what);

}  // namespace indexcache
