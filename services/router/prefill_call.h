// The Prefill call of one attempt (internal.proto: PrefillWorker.Prefill), read on a thread of its own
// so that the decode worker's stream is read beside it. The prefill worker streams the request's first
// token as soon as it is sampled — before the handoff's last rows reach the decode worker — and this
// hands it to `on_first_token` on the call's thread at once, which is how the client gets it without
// waiting for the handoff's tail, the decode worker's checks and its first message. The call's last
// message, `done`, carries the prefill's timings and handoff bytes.
//
// The decode worker's stream (told first_token_from_prefill) starts with the second token; whoever
// relays it waits for AwaitFirstToken first, so the client's tokens stay in order whichever of the two
// streams speaks first.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "indexcache/v1/internal.grpc.pb.h"

namespace indexcache {

class PrefillCall {
 public:
  struct Handlers {
    // The first token, on the call's thread; false stops the call (the client is gone).
    std::function<bool(const v1::FirstToken&)> on_first_token;
    // The call's end, on its thread, before any waiter wakes (frees the worker's load ledger; on
    // failure cancels the decode call, which would otherwise wait for a handoff that is not coming).
    std::function<void(const grpc::Status&)> on_end;
  };

  // Starts `request` on `stub` under `context`; all three outlive the call (the destructor joins it).
  PrefillCall(v1::PrefillWorker::StubInterface& stub, grpc::ClientContext& context, v1::PrefillRequest request,
              Handlers handlers);
  ~PrefillCall();
  PrefillCall(const PrefillCall&) = delete;
  PrefillCall& operator=(const PrefillCall&) = delete;

  // Blocks until on_first_token has run and returned true, or the call ended without that; which one.
  bool AwaitFirstToken();
  // Blocks until the call ended; its status. A stream that ended OK without its first token or its
  // `done` message is INTERNAL: the worker broke the protocol.
  grpc::Status Wait();
  // The `done` message; valid after Wait returned OK.
  const v1::PrefillDone& done() const { return done_; }
  // After Wait: the call failed because the decode worker refused the handoff or the transfer to it
  // broke (the prefill worker said so: services/common/handoff_failed.h).
  bool handoff_failed() const { return handoff_failed_; }

 private:
  void Read(v1::PrefillWorker::StubInterface& stub, grpc::ClientContext& context);

  const v1::PrefillRequest request_;
  const Handlers handlers_;
  std::mutex mu_;
  std::condition_variable changed_;
  bool first_token_relayed_ = false;  // guarded by mu_
  bool ended_ = false;                // guarded by mu_
  grpc::Status status_;               // guarded by mu_
  v1::PrefillDone done_;              // written before ended_ is set
  bool handoff_failed_ = false;       // written before ended_ is set
  std::thread thread_;                // last: starts once everything above exists
};

}  // namespace indexcache
