// The GPU side of the NCCL handoff: one end of a two-rank communicator between a prefill worker
// (rank 0) and a decode worker (rank 1), and the factory that makes one. The transport logic
// (nccl_handoff.h) talks only to these interfaces, so tests run it over an in-process loopback
// (tests/handoff/loopback_channel.h) on machines without a GPU; MakeNcclChannelFactory is the real one.
//
// Rows come from and go to host memory (a CPU engine's staging, staged through a device buffer of the
// channel's GPU) or device memory of the channel's GPU (a CUDA engine on that GPU: handed to
// ncclSend/ncclRecv where they lie, with no staging copy). The ticket ordering and the control
// channel are the same either way.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/kv/landed_rows.h"

namespace indexcache {

// One end of a communicator. Used by one thread at a time (the transport orders the calls), except
// Abort. Any failed call leaves the channel dead: the communicator is aborted and every later call
// fails at once.
class PeerChannel {
 public:
  virtual ~PeerChannel() = default;
  // Sends `bytes` bytes of `memory` (device memory: of this channel's GPU) to the other rank; returns
  // once they have left this end. Fails with DEADLINE_EXCEEDED past `deadline`, CANCELLED once
  // `*cancelled` turns true (checked while waiting), or the communicator's error.
  virtual absl::Status Send(const void* data, size_t bytes, RowsMemory memory, absl::Time deadline,
                            const std::atomic<bool>* cancelled) = 0;
  // Receives exactly `bytes` bytes from the other rank into `memory`, same failures.
  virtual absl::Status Recv(void* data, size_t bytes, RowsMemory memory, absl::Time deadline,
                            const std::atomic<bool>* cancelled) = 0;
  // The CRC-32 (zlib's) of `bytes` bytes of this channel's GPU's memory at `device_data`, computed on
  // the GPU (the handoff's checksum of rows the host never sees), same failures.
  virtual absl::StatusOr<uint32_t> DeviceRowsCrc32(const void* device_data, size_t bytes, absl::Time deadline,
                                               const std::atomic<bool>* cancelled) = 0;
  // Breaks the channel from any thread: a call waiting now fails soon, later calls at once.
  virtual void Abort() = 0;
};

class PeerChannelFactory {
 public:
  virtual ~PeerChannelFactory() = default;
  // A fresh rendezvous id (an ncclUniqueId's bytes); the other end receives it over the control channel.
  virtual absl::StatusOr<std::string> NewUniqueId() = 0;
  // Joins communicator `unique_id` as `rank` (0 or 1). Both ends call it at about the same time;
  // past `deadline` (the peer never came) it fails with DEADLINE_EXCEEDED and leaves nothing behind.
  virtual absl::StatusOr<std::unique_ptr<PeerChannel>> Join(const std::string& unique_id, int rank,
                                                            absl::Time deadline) = 0;
};

// NCCL on GPU `device` (a CUDA ordinal). UNIMPLEMENTED in a build without NCCL, INVALID_ARGUMENT for
// a device this machine does not have. Forces NCCL_NVLS_ENABLE=0 in the process first: NVLink
// multicast must stay off on the shared GPU hosts.
absl::StatusOr<std::unique_ptr<PeerChannelFactory>> MakeNcclChannelFactory(int device);

}  // namespace indexcache
