// gRPC status → absl status. The canonical codes are the same numbers in both; the message gains the
// call's name and the router's address, and a deadline that ran out says how long it was, so that an
// error printed far from the call still tells what failed and where.
#pragma once

#include <optional>
#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace indexcache::client {

// `call`: "Generate", "Abort", ...; `timeout`: the deadline the call ran under, if any.
absl::Status CallStatus(const grpc::Status& status, const std::string& call, const std::string& address,
                        std::optional<absl::Duration> timeout);

}  // namespace indexcache::client
