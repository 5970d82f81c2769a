// How secrets reach a process and a call: read from a file's first line (never a flag, so that they
// show in no process listing), and presented as `authorization: Bearer <secret>` — the cluster token
// on the internal plane (cluster_token.h, grpc_token.h), the public API's key on the router's gRPC
// and HTTP APIs (`--api-key-file`).
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace indexcache {

// The file's first line, surrounding whitespace stripped; INVALID_ARGUMENT naming `what` (say,
// "API key") when the file is unreadable or the line empty.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what);

// The `authorization` value that presents `secret`: "Bearer <secret>".
std::string BearerValue(absl::string_view secret);
// The secret of an `authorization` value "Bearer <secret>"; nullopt for any other value.
std::optional<absl::string_view> BearerSecret(absl::string_view authorization);

// Whether `authorization` is "Bearer <secret>", compared in time independent of where they differ.
bool BearerMatches(absl::string_view authorization, absl::string_view secret);

}  // namespace indexcache
