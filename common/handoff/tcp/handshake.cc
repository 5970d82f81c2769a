#include "common/handoff/tcp/handshake.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace indexcache {

boost::asio::awaitable<absl::Status> ChallengePeer(AsyncFramedConnection& connection, const ClusterToken& token) {
  if (!token.enabled()) co_return absl::OkStatus();
  CO_ASSIGN_OR_RETURN(const std::string nonce, ClusterToken::NewNonce());
  CO_RETURN_IF_ERROR(co_await connection.WriteExactly(nonce));
  std::string response(ClusterToken::kResponseBytes, '\0');
  CO_RETURN_IF_ERROR(co_await connection.ReadExactly(response.data(), response.size()));
  if (!token.CheckResponse(nonce, kHandoffAuthContext, response)) {
    co_return absl::UnauthenticatedError("the handoff peer's answer to the challenge does not prove the cluster token");
  }
  co_return absl::OkStatus();
}

absl::Status AnswerChallenge(FramedConnection& connection, const ClusterToken& token) {
  if (!token.enabled()) return absl::OkStatus();
  std::string nonce(ClusterToken::kNonceBytes, '\0');
  if (absl::Status read = connection.ReadExactly(nonce.data(), nonce.size()); !read.ok()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the decode worker sent no challenge (does it run with the same cluster token?): ", read.message()));
  }
  return connection.WriteExactly(token.Respond(nonce, kHandoffAuthContext));
}

}  // namespace indexcache
