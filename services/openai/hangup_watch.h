// Cancels a gRPC call when the HTTP client that asked for it hangs up, so the router's GenerateCall
// sees a cancelled context and frees the request's KV on both workers — the same cancel path as a
// gRPC client's. The connection thread is blocked reading the router's stream meanwhile, and a
// non-streamed request writes nothing until the end, so the socket is watched from a thread of its
// own: poll() for POLLRDHUP (the peer's FIN) or an error, 50 ms at a time.
//
// A client that half-closes its sending side after the request (shutdown(SHUT_WR)) reads as gone
// too; HTTP clients (curl, browsers, Node's fetch) do not do that.
#pragma once

#include <atomic>
#include <thread>

#include "grpcpp/client_context.h"

namespace indexcache::openai {

class HangupWatch {
 public:
  // Watches `socket_fd` until destroyed; `call` must outlive the watch.
  HangupWatch(int socket_fd, grpc::ClientContext* call);
  ~HangupWatch();
  HangupWatch(const HangupWatch&) = delete;
  HangupWatch& operator=(const HangupWatch&) = delete;

  // Whether the client hung up (and the call was cancelled).
  bool hung_up() const { return hung_up_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<bool> hung_up_{false};
  std::thread thread_;
};

}  // namespace indexcache::openai
