#include "services/openai/hangup_watch.h"

#include <poll.h>

namespace indexcache::openai {

HangupWatch::HangupWatch(int socket_fd, grpc::ClientContext* call) {
  thread_ = std::thread([this, socket_fd, call] {
    while (!stop_) {
      // POLLIN is not asked for: a pipelined next request is data, not a hang-up.
      pollfd watched{socket_fd, POLLRDHUP, 0};
      const int ready = poll(&watched, 1, /*timeout_ms=*/50);
      if (ready > 0 && (watched.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) {
        hung_up_ = true;
        call->TryCancel();
        return;
      }
    }
  });
}

HangupWatch::~HangupWatch() {
  stop_ = true;
  thread_.join();
}

}  // namespace indexcache::openai
