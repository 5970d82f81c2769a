// The ids the router gives requests. An id is the capability to act on its request: Abort takes it,
// and the workers' calls carry it (with "#retryN" for later dispatches), so it must not be guessable:
// 128 bits from the kernel's CSPRNG (getrandom), as 32 hex digits after the client's optional label.
// Sequential ids ("<prefix>-<counter>") let anyone abort other users' streams (issue 13).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace indexcache {

// A client's label: at most 64 characters of [A-Za-z0-9._:-] (ids reach logs and metrics labels: no
// newline, quote or space can forge a line). INVALID_ARGUMENT naming what is wrong otherwise.
absl::Status ValidateRequestLabel(absl::string_view label);

// "<label>-<32 hex digits>", or the hex digits alone for an empty label. The label must be valid.
absl::StatusOr<std::string> NewRequestId(absl::string_view label);

}  // namespace indexcache
