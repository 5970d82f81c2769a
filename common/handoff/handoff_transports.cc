#include "common/handoff/handoff_transports.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/handoff/grpc/grpc_handoff.h"
#include "common/handoff/tcp/tcp_handoff.h"

namespace indexcache {

std::unique_ptr<HandoffTransports> HandoffTransports::WithDefaults(const ClusterToken& token) {
  auto transports = std::make_unique<HandoffTransports>();
  transports->Add(std::make_unique<GrpcHandoffConnector>(token));
  transports->Add(std::make_unique<TcpHandoffConnector>(TcpHandoffOptions{.token = token}));
  return transports;
}

const HandoffTransports& HandoffTransports::Defaults() {
  static const HandoffTransports* const defaults = WithDefaults().release();
  return *defaults;
}

void HandoffTransports::Add(std::unique_ptr<HandoffConnector> connector) {
  const v1::HandoffTransport transport = connector->transport();
  std::erase_if(connectors_, [&](const auto& c) { return c->transport() == transport; });
  connectors_.push_back(std::move(connector));
  std::sort(connectors_.begin(), connectors_.end(),
            [](const auto& a, const auto& b) { return a->transport() < b->transport(); });
}

HandoffConnector* HandoffTransports::Find(v1::HandoffTransport transport) const {
  for (const auto& connector : connectors_) {
    if (connector->transport() == transport) return connector.get();
  }
  return nullptr;
}

std::vector<const HandoffConnector*> HandoffTransports::connectors() const {
  std::vector<const HandoffConnector*> all;
  for (const auto& connector : connectors_) all.push_back(connector.get());
  return all;
}

std::string HandoffTransports::Describe() const {
  std::string text;
  for (const auto& connector : connectors_) {
    const HandoffCapabilities caps = connector->capabilities();
    absl::StrAppend(&text, text.empty() ? "" : ", ", std::string(connector->name()),
                    caps.needs_peer_setup ? " (peer setup)" : "", caps.device_memory ? " (device memory)" : "");
  }
  return text;
}

absl::StatusOr<std::unique_ptr<HandoffSender>> HandoffTransports::Connect(v1::HandoffTransport transport,
                                                                          const std::string& address,
                                                                          absl::Duration connect_timeout) const {
  if (HandoffConnector* connector = Find(transport); connector != nullptr) {
    return connector->Connect(address, connect_timeout);
  }
  switch (transport) {
    case v1::HANDOFF_TRANSPORT_NCCL:
      // Its communicators belong to a worker on a GPU: an NcclHandoffClient in the worker's set.
      return absl::FailedPreconditionError(
          "an NCCL handoff is opened through the prefill worker's NCCL client (start it with --nccl-gpu N)");
    case v1::HANDOFF_TRANSPORT_GRPC:
    case v1::HANDOFF_TRANSPORT_TCP:
      return absl::FailedPreconditionError(
          absl::StrCat("this worker has no ", v1::HandoffTransport_Name(transport), " handoff"));
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown handoff transport ", static_cast<int>(transport)));
}

absl::StatusOr<std::unique_ptr<HandoffSender>> ConnectHandoff(v1::HandoffTransport transport,
                                                              const std::string& address,
                                                              absl::Duration connect_timeout) {
  return HandoffTransports::Defaults().Connect(transport, address, connect_timeout);
}

}  // namespace indexcache
