// An in-process stand-in for NCCL behind the PeerChannel seam, so the NCCL handoff's logic (id
// exchange, ticket order, rejections, aborts, timeouts) runs in ctest without a GPU. It keeps NCCL's
// semantics where the transport depends on them: Join meets its peer by unique id or times out; a
// Send completes only once the peer's Recv has taken the bytes (an unmatched send times out, it never
// completes into the void); sizes must match; an abort breaks only its own end — the peer notices by
// its own timeout, as with a peer process that died.
#pragma once

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <zlib.h>

#include "absl/strings/str_cat.h"
#include "common/handoff/nccl/nccl_channel.h"
#include "common/util/status_macros.h"

namespace indexcache::testing {

// What a set of loopback factories share: the communicators being joined and their message queues.
class LoopbackFabric {
 public:
  struct Link {
    int joined = 0;
    std::deque<std::string> inbox[2];  // inbox[r]: messages sent to rank r
    uint64_t taken[2] = {0, 0};        // messages rank r has received
    uint64_t sent[2] = {0, 0};         // messages rank r has sent
  };

  std::mutex mu;
  std::condition_variable changed;
  std::map<std::string, std::shared_ptr<Link>> links;  // guarded by mu, by unique id
  int ids_made = 0;                                     // guarded by mu
  int device_crcs = 0;                                  // guarded by mu: DeviceRowsCrc32 calls
  int corrupt_send = 0;  // guarded by mu: when > 0, the Send it counts down to flips a bit of its bytes
};

class LoopbackChannel final : public PeerChannel {
 public:
  LoopbackChannel(std::shared_ptr<LoopbackFabric> fabric, std::shared_ptr<LoopbackFabric::Link> link, int rank)
      : fabric_(std::move(fabric)), link_(std::move(link)), rank_(rank) {}

  // "Device" memory is host memory here, as on the CPU backend: either kind moves the same way.
  absl::Status Send(const void* host, size_t bytes, RowsMemory /*memory*/, absl::Time deadline,
                    const std::atomic<bool>* cancelled) override {
    std::unique_lock<std::mutex> lock(fabric_->mu);
    if (dead_) return absl::UnavailableError("loopback channel aborted");
    const int peer = 1 - rank_;
    std::string& message = link_->inbox[peer].emplace_back(static_cast<const char*>(host), bytes);
    if (fabric_->corrupt_send > 0 && --fabric_->corrupt_send == 0 && !message.empty()) message[message.size() / 2] ^= 0x10;
    const uint64_t mine = ++link_->sent[rank_];
    fabric_->changed.notify_all();
    return WaitFor(lock, deadline, cancelled, [&] { return link_->taken[peer] >= mine; });
  }

  absl::Status Recv(void* host, size_t bytes, RowsMemory /*memory*/, absl::Time deadline,
                    const std::atomic<bool>* cancelled) override {
    std::unique_lock<std::mutex> lock(fabric_->mu);
    if (dead_) return absl::UnavailableError("loopback channel aborted");
    RETURN_IF_ERROR(WaitFor(lock, deadline, cancelled, [&] { return !link_->inbox[rank_].empty(); }));
    std::string message = std::move(link_->inbox[rank_].front());
    link_->inbox[rank_].pop_front();
    ++link_->taken[rank_];
    fabric_->changed.notify_all();
    if (message.size() != bytes) {
      dead_ = true;
      return absl::InternalError(
          absl::StrCat("loopback receive of ", bytes, " bytes matched a send of ", message.size()));
    }
    std::memcpy(host, message.data(), bytes);
    return absl::OkStatus();
  }

  // zlib's CRC-32 of the bytes (host memory standing for the GPU's); counts the calls.
  absl::StatusOr<uint32_t> DeviceRowsCrc32(const void* device_data, size_t bytes, absl::Time /*deadline*/,
                                       const std::atomic<bool>* /*cancelled*/) override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    if (dead_) return absl::UnavailableError("loopback channel aborted");
    ++fabric_->device_crcs;
    return static_cast<uint32_t>(crc32(0, static_cast<const Bytef*>(device_data), static_cast<uInt>(bytes)));
  }

  void Abort() override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    dead_ = true;
    fabric_->changed.notify_all();
  }

 private:
  template <typename Ready>
  absl::Status WaitFor(std::unique_lock<std::mutex>& lock, absl::Time deadline, const std::atomic<bool>* cancelled,
                       Ready ready) {
    for (;;) {
      if (ready()) return absl::OkStatus();
      if (dead_) return absl::CancelledError("loopback channel aborted");
      if (cancelled != nullptr && cancelled->load()) {
        dead_ = true;
        return absl::CancelledError("cancelled");
      }
      if (absl::Now() > deadline) {
        dead_ = true;
        return absl::DeadlineExceededError("the loopback peer did not take part in time");
      }
      // Cancellation is a flag, not a notification: look again every few milliseconds.
      fabric_->changed.wait_for(lock, std::chrono::milliseconds(5));
    }
  }

  std::shared_ptr<LoopbackFabric> fabric_;
  std::shared_ptr<LoopbackFabric::Link> link_;
  const int rank_;
  bool dead_ = false;  // guarded by fabric_->mu
};

class LoopbackFactory final : public PeerChannelFactory {
 public:
  explicit LoopbackFactory(std::shared_ptr<LoopbackFabric> fabric) : fabric_(std::move(fabric)) {}

  absl::StatusOr<std::string> NewUniqueId() override {
    std::lock_guard<std::mutex> lock(fabric_->mu);
    return absl::StrCat("loopback-id-", ++fabric_->ids_made);
  }

  absl::StatusOr<std::unique_ptr<PeerChannel>> Join(const std::string& unique_id, int rank,
                                                    absl::Time deadline) override {
    std::unique_lock<std::mutex> lock(fabric_->mu);
    std::shared_ptr<LoopbackFabric::Link>& link = fabric_->links[unique_id];
    if (link == nullptr) link = std::make_shared<LoopbackFabric::Link>();
    std::shared_ptr<LoopbackFabric::Link> mine = link;
    ++mine->joined;
    fabric_->changed.notify_all();
    if (!fabric_->changed.wait_until(lock, absl::ToChronoTime(deadline), [&] { return mine->joined >= 2; })) {
      return absl::DeadlineExceededError("the loopback peer never joined");
    }
    return std::unique_ptr<PeerChannel>(new LoopbackChannel(fabric_, mine, rank));
  }

 private:
  std::shared_ptr<LoopbackFabric> fabric_;
};

}  // namespace indexcache::testing
