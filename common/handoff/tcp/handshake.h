// A handoff connection's authentication (TCP data plane and NCCL control channel), before any frame:
//
//   receiver → sender   nonce      ClusterToken::kNonceBytes random bytes
//   sender → receiver   response   HMAC-SHA256(cluster token, nonce ‖ kHandoffAuthContext)
//
// The receiver checks the response in constant time and reads no frame — so allocates nothing a
// frame announces — before it passes; a connection that fails is closed. The token itself never
// crosses the wire, and a fresh nonce per connection makes a recorded answer worthless. With no token
// (ClusterToken none) both sides skip the exchange.
#pragma once

#include "absl/status/status.h"
#include "boost/asio/awaitable.hpp"
#include "common/auth/cluster_token.h"
#include "common/handoff/tcp/async_framed_connection.h"
#include "common/handoff/tcp/tcp_frame.h"

namespace indexcache {

// Names what the answer is for, so it proves nothing on any other challenge–response channel.
inline constexpr char kHandoffAuthContext[] = "indexcache.v1 handoff connection";

// Receiver side (the TCP handoff server, asynchronously): OK once the peer proved it holds `token`;
// UNAUTHENTICATED for a wrong answer, the I/O error (DEADLINE_EXCEEDED within the connection's I/O
// timeout) for none.
boost::asio::awaitable<absl::Status> ChallengePeer(AsyncFramedConnection& connection, const ClusterToken& token);
// Sender side, right after connecting: answers the receiver's nonce.
absl::Status AnswerChallenge(FramedConnection& connection, const ClusterToken& token);

}  // namespace indexcache
