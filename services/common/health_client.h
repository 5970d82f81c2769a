// A client for the standard grpc.health.v1.Health/Check. Debian's gRPC 1.51 ships the server side
// (grpc::EnableDefaultHealthCheckService) but no generated health proto for clients, so the call goes
// through a generic stub with the two tiny messages encoded by hand:
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }   // SERVING = 1
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"

namespace indexcache {

// OK when `service` ("" = the whole server) on `channel` answers SERVING within `timeout`;
// UNAVAILABLE naming the status it reported, or the RPC's error, otherwise.
absl::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout,
                         const std::string& service = "");

}  // namespace indexcache
