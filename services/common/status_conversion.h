// absl::Status ⇄ grpc::Status. Both use the canonical gRPC code numbering, so codes map one to one.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace indexcache {

absl::Status FromGrpcStatus(const grpc::Status& status);
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace indexcache
