// HandoffTransports, the set of connectors a prefill worker opens handoffs through: the defaults,
// capabilities as reported, NCCL only with communicators, and the errors for a transport the set lacks.
#include <memory>

#include "common/handoff/grpc/grpc_handoff.h"
#include "common/handoff/handoff_transports.h"
#include "common/handoff/nccl/nccl_handoff.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/handoff/loopback_channel.h"

namespace indexcache {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(HandoffTransports, DefaultsAreGrpcAndTcp) {
  std::unique_ptr<HandoffTransports> transports = HandoffTransports::WithDefaults();
  ASSERT_NE(transports->Find(v1::HANDOFF_TRANSPORT_GRPC), nullptr);
  ASSERT_NE(transports->Find(v1::HANDOFF_TRANSPORT_TCP), nullptr);
  EXPECT_EQ(transports->Find(v1::HANDOFF_TRANSPORT_NCCL), nullptr);
  EXPECT_EQ(transports->Find(v1::HANDOFF_TRANSPORT_GRPC)->name(), "grpc");
  EXPECT_EQ(transports->Find(v1::HANDOFF_TRANSPORT_TCP)->name(), "tcp");
  EXPECT_EQ(transports->Describe(), "grpc, tcp");
  EXPECT_EQ(HandoffTransports::Defaults().Describe(), "grpc, tcp");
}

TEST(HandoffTransports, ReportsCapabilities) {
  auto fabric = std::make_shared<testing::LoopbackFabric>();
  std::unique_ptr<HandoffTransports> transports = HandoffTransports::WithDefaults();
  transports->Add(std::make_unique<NcclHandoffClient>(std::make_unique<testing::LoopbackFactory>(fabric)));
  std::vector<v1::HandoffTransport> order;
  for (const HandoffConnector* connector : transports->connectors()) {
    order.push_back(connector->transport());
    // No transport sends from device memory yet; only NCCL keeps per-peer state (communicators).
    EXPECT_FALSE(connector->capabilities().device_memory) << connector->name();
    EXPECT_EQ(connector->capabilities().needs_peer_setup, connector->transport() == v1::HANDOFF_TRANSPORT_NCCL)
        << connector->name();
  }
  EXPECT_THAT(order, ElementsAre(v1::HANDOFF_TRANSPORT_GRPC, v1::HANDOFF_TRANSPORT_TCP, v1::HANDOFF_TRANSPORT_NCCL));
  EXPECT_EQ(transports->Describe(), "grpc, tcp, nccl (peer setup)");
}

TEST(HandoffTransports, NcclAbsentWithoutCommunicators) {
  auto sender = HandoffTransports::WithDefaults()->Connect(v1::HANDOFF_TRANSPORT_NCCL, "127.0.0.1:1", absl::Seconds(1));
  EXPECT_EQ(sender.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(sender.status().message(), HasSubstr("--nccl-gpu"));
}

TEST(HandoffTransports, AbsentOrUnknownTransport) {
  HandoffTransports empty;
  auto sender = empty.Connect(v1::HANDOFF_TRANSPORT_TCP, "127.0.0.1:1", absl::Seconds(1));
  EXPECT_EQ(sender.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(sender.status().message(), HasSubstr("HANDOFF_TRANSPORT_TCP"));
  auto unknown = HandoffTransports::WithDefaults()->Connect(static_cast<v1::HandoffTransport>(42), "127.0.0.1:1",
                                                            absl::Seconds(1));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown handoff transport 42"));
}

TEST(HandoffTransports, AddReplacesTheSameTransport) {
  HandoffTransports transports;
  transports.Add(std::make_unique<TcpHandoffConnector>());
  transports.Add(std::make_unique<TcpHandoffConnector>(TcpHandoffOptions{.io_timeout = absl::Seconds(1)}));
  EXPECT_EQ(transports.connectors().size(), 1u);
}

TEST(HandoffTransports, ConnectGoesThroughTheTransportsConnector) {
  // Nothing listens on port 1: the TCP connector's own refusal, not the set's.
  auto sender = HandoffTransports::WithDefaults()->Connect(v1::HANDOFF_TRANSPORT_TCP, "127.0.0.1:1", absl::Seconds(1));
  EXPECT_FALSE(sender.ok());
  EXPECT_NE(sender.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(sender.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace indexcache
