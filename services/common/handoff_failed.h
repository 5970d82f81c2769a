// How a prefill worker tells the router that a failed Prefill call is the decode worker's doing: the
// decode worker refused the handoff or the transfer to it broke off. A dead prefill worker's call
// breaks without this mark, so the router blames the worker that failed, not the one that saw it.
#pragma once

#include <string_view>

namespace indexcache {

// Trailing metadata key (value "true") on such a failed call.
inline constexpr std::string_view kHandoffFailedMetadata = "indexcache-handoff-failed";

}  // namespace indexcache
