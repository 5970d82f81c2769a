// The set of handoff transports a prefill worker can open, one HandoffConnector per transport. A
// worker builds it once — gRPC and TCP always (WithDefaults), NCCL when it has NCCL communicators
// (Add an NcclHandoffClient) — and every job opens its handoff through it, whatever the transport.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "common/handoff/handoff_transport.h"

namespace indexcache {

class HandoffTransports {
 public:
  HandoffTransports() = default;
  HandoffTransports(const HandoffTransports&) = delete;
  HandoffTransports& operator=(const HandoffTransports&) = delete;

  // gRPC and TCP (default options), which need nothing but an address and the cluster token
  // their connections prove (none: no proof).
  static std::unique_ptr<HandoffTransports> WithDefaults(const ClusterToken& token = {});
  // A process-wide WithDefaults() without a token, for jobs and tools given no set of their own.
  static const HandoffTransports& Defaults();

  // Adds (or replaces) the connector of `connector->transport()`.
  void Add(std::unique_ptr<HandoffConnector> connector);
  // The connector of `transport`, or null when this set lacks it.
  HandoffConnector* Find(v1::HandoffTransport transport) const;
  // The set's connectors, in transport order.
  std::vector<const HandoffConnector*> connectors() const;
  // "grpc, tcp, nccl (peer setup)": the transports and their capabilities, for a worker's log.
  std::string Describe() const;

  // Opens a handoff over `transport` to `address`. INVALID_ARGUMENT for a value that names no
  // transport; FAILED_PRECONDITION for a transport this set lacks (NCCL without communicators:
  // the message says to start the worker with --nccl-gpu).
  absl::StatusOr<std::unique_ptr<HandoffSender>> Connect(v1::HandoffTransport transport, const std::string& address,
                                                         absl::Duration connect_timeout) const;

 private:
  std::vector<std::unique_ptr<HandoffConnector>> connectors_;  // sorted by transport
};

// HandoffTransports::Defaults().Connect: a gRPC or TCP handoff (tests, tools).
absl::StatusOr<std::unique_ptr<HandoffSender>> ConnectHandoff(v1::HandoffTransport transport,
                                                              const std::string& address,
                                                              absl::Duration connect_timeout);

}  // namespace indexcache
