// CRC-32 (zlib's polynomial, = crc32(0, data, n)) of bytes in GPU memory, for handoff rows that the
// NCCL transport sends from or receives into device memory (checksum.cc sums host bytes with ISA-L).
// One GPU thread sums each kDeviceCrc32PieceBytes piece; the piece CRCs come back to pinned host
// memory and CombinePieceCrcs (crc32_combine.h) joins them.
//
//   DeviceCrc32 crc;
//   RETURN_IF_ERROR(crc.Enqueue(rows_on_gpu, bytes, stream));
//   ... cudaStreamSynchronize(stream) or an event, as the caller already waits ...
//   const uint32_t rows_crc = crc.Result();
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace indexcache {

// Bytes per GPU thread. All pieces of a chunk run at once, so the kernel takes about one thread's
// time over one piece (slicing-by-8: a chain of dependent shared-memory lookups): small pieces make
// it short. The host joins the pieces one crc32_combine_op each (~27 ns on the dev machine's CPU):
// few pieces keep that short. For the handoff's ≤ 4 MiB rows chunks, 8 KiB is 512 pieces (~14 µs of
// join) against a kernel of tens of µs; 4 KiB would double the join, 16 KiB double the kernel.
// device_crc32_check prints both halves for 64 MiB.
inline constexpr size_t kDeviceCrc32PieceBytes = 8192;

// One per stream user; not thread-safe. Uses the device current at Enqueue, the same one every time.
class DeviceCrc32 {
 public:
  DeviceCrc32() = default;
  ~DeviceCrc32();
  DeviceCrc32(const DeviceCrc32&) = delete;
  DeviceCrc32& operator=(const DeviceCrc32&) = delete;

  // Enqueues on `stream` the kernel over `bytes` bytes at `device_data` (any alignment) and the copy
  // of its piece CRCs to host memory; does not wait. The previous Enqueue's work must be finished
  // (its Result read): the scratch it used may be reallocated here.
  [[nodiscard]] absl::Status Enqueue(const void* device_data, size_t bytes, cudaStream_t stream);

  // The CRC-32 of the last Enqueue's bytes, once the caller has waited for its stream; 0 for 0 bytes.
  uint32_t Result() const;

 private:
  absl::Status Reserve(size_t pieces);

  uint32_t* device_crcs_ = nullptr;  // [capacity_] piece CRCs, written by the kernel
  uint32_t* host_crcs_ = nullptr;    // [capacity_] pinned, so the copy back is asynchronous
  size_t capacity_ = 0;
  size_t bytes_ = 0;  // of the last Enqueue
};

}  // namespace indexcache
