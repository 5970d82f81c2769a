// MakeNcclChannelFactory in a build without NCCL (no CUDA toolkit, or no libnccl in it): the NCCL
// handoff is refused with a clear message; the gRPC and TCP transports work as ever.
#include "common/handoff/nccl/nccl_channel.h"

namespace indexcache {

absl::StatusOr<std::unique_ptr<PeerChannelFactory>> MakeNcclChannelFactory(int device) {
  return absl::UnimplementedError(
      "this build has no NCCL (it needs the CUDA toolkit with libnccl at configure time); use the gRPC or TCP "
      "handoff transport");
}

}  // namespace indexcache
