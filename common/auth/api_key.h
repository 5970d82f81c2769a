// The public API's key (`--api-key-file`): what the router requires of its gRPC and HTTP clients as
// `authorization: Bearer <key>` (grpc_token.h's CheckApiKey, the OpenAI API's Authorized), and what
// the tools that call it send.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace indexcache {

// The file's first line, surrounding whitespace stripped. Read from a file rather than taken as a
// flag, so that it shows in no process listing. INVALID_ARGUMENT when unreadable or empty.
absl::StatusOr<std::string> ReadApiKeyFile(const std::string& path);

}  // namespace indexcache
