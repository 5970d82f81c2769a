// PeerChannel over NCCL (built only when the CUDA toolkit's NCCL is found). Communicators are
// non-blocking (ncclConfig_t::blocking = 0): every NCCL call returns at once and this file polls
// ncclCommGetAsyncError and the stream, so a deadline, a cancel or Abort can always end the wait with
// ncclCommAbort — a dead or stuck peer never hangs the worker.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/handoff/nccl/device_crc32.h"
#include "common/handoff/nccl/nccl_channel.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// Between two polls of a communicator or stream: short against a multi-MB transfer (~100 µs on
// NVLink), long enough not to starve the other threads of a 2-core machine.
constexpr absl::Duration kPollInterval = absl::Microseconds(20);

absl::Status CudaStatus(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": CUDA error ", cudaGetErrorName(error), " (",
                                          cudaGetErrorString(error), ")"));
}

absl::Status NcclStatus(ncclResult_t result, ncclComm_t comm, absl::string_view what) {
  const char* detail = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  return absl::UnavailableError(absl::StrCat(what, ": NCCL error ", ncclGetErrorString(result),
                                             detail != nullptr && *detail != '\0' ? absl::StrCat(" (", detail, ")")
                                                                                  : std::string()));
}

class NcclChannel final : public PeerChannel {
 public:
  NcclChannel(int device, int peer, ncclComm_t comm, cudaStream_t stream)
      : device_(device), peer_(peer), comm_(comm), stream_(stream) {}

  ~NcclChannel() override {
    cudaSetDevice(device_);
    AbortComm();
    if (staging_ != nullptr) cudaFree(staging_);
    cudaStreamDestroy(stream_);
  }

  absl::Status Send(const void* data, size_t bytes, RowsMemory memory, absl::Time deadline,
                    const std::atomic<bool>* cancelled) override {
    return Transfer(/*send=*/true, const_cast<void*>(data), bytes, memory, deadline, cancelled);
  }

  absl::Status Recv(void* data, size_t bytes, RowsMemory memory, absl::Time deadline,
                    const std::atomic<bool>* cancelled) override {
    return Transfer(/*send=*/false, data, bytes, memory, deadline, cancelled);
  }

  absl::StatusOr<uint32_t> DeviceRowsCrc32(const void* device_data, size_t bytes, absl::Time deadline,
                                       const std::atomic<bool>* cancelled) override {
    if (dead_) return absl::UnavailableError("the NCCL handoff communicator was aborted after an earlier failure");
    cudaSetDevice(device_);
    absl::Status status = crc_.Enqueue(device_data, bytes, stream_);
    if (status.ok()) status = Wait(deadline, cancelled, "checksumming handoff rows", /*until_stream_done=*/true);
    if (!status.ok()) {
      AbortComm();
      dead_ = true;
      return status;
    }
    return crc_.Result();
  }

  void Abort() override { abort_requested_ = true; }

 private:
  // Device rows go to ncclSend/ncclRecv where they lie. Host rows go through staging_, a device buffer
  // of this channel's GPU: H2D copy then ncclSend, or ncclRecv then D2H copy, all on stream_.
  absl::Status Transfer(bool send, void* data, size_t bytes, RowsMemory memory, absl::Time deadline,
                        const std::atomic<bool>* cancelled) {
    if (dead_) return absl::UnavailableError("the NCCL handoff communicator was aborted after an earlier failure");
    if (bytes == 0) return absl::OkStatus();
    cudaSetDevice(device_);
    const bool staged = memory == RowsMemory::kHost;
    absl::Status status = staged ? EnsureStaging(bytes) : absl::OkStatus();
    if (status.ok() && staged && send) {
      status = CudaStatus(cudaMemcpyAsync(staging_, data, bytes, cudaMemcpyHostToDevice, stream_),
                          "staging handoff rows on the GPU");
    }
    void* on_gpu = staged ? staging_ : data;
    const absl::string_view what = send ? "sending handoff rows" : "receiving handoff rows";
    if (status.ok()) {
      const ncclResult_t issued = send ? ncclSend(on_gpu, bytes, ncclUint8, peer_, comm_, stream_)
                                       : ncclRecv(on_gpu, bytes, ncclUint8, peer_, comm_, stream_);
      if (issued != ncclSuccess && issued != ncclInProgress) {
        status = NcclStatus(issued, comm_, send ? "ncclSend" : "ncclRecv");
      }
    }
    if (status.ok() && staged && !send) {
      // The copy back may only be queued once NCCL has put the receive on the stream.
      status = Wait(deadline, cancelled, what, /*until_stream_done=*/false);
      if (status.ok()) {
        status = CudaStatus(cudaMemcpyAsync(data, staging_, bytes, cudaMemcpyDeviceToHost, stream_),
                            "copying received handoff rows to the host");
      }
    }
    if (status.ok()) status = Wait(deadline, cancelled, what, /*until_stream_done=*/true);
    if (!status.ok()) {
      AbortComm();
      dead_ = true;
    }
    return status;
  }

  absl::Status EnsureStaging(size_t bytes) {
    if (bytes <= staging_bytes_) return absl::OkStatus();
    if (staging_ != nullptr) {
      // The stream is idle between transfers, so the old buffer is free to go.
      cudaFree(staging_);
      staging_ = nullptr;
      staging_bytes_ = 0;
    }
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&staging_, bytes), "allocating the handoff staging buffer"));
    staging_bytes_ = bytes;
    return absl::OkStatus();
  }

  // Until NCCL has put the operation on the stream (non-blocking communicators report ncclInProgress
  // while they do), and with `until_stream_done` until the stream has run everything queued.
  absl::Status Wait(absl::Time deadline, const std::atomic<bool>* cancelled, absl::string_view what,
                    bool until_stream_done) {
    for (;;) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &async);
      if (queried != ncclSuccess) return NcclStatus(queried, comm_, what);
      if (async != ncclSuccess && async != ncclInProgress) return NcclStatus(async, comm_, what);
      if (async == ncclSuccess && !until_stream_done) return absl::OkStatus();
      if (async == ncclSuccess) {
        const cudaError_t done = cudaStreamQuery(stream_);
        if (done == cudaSuccess) return absl::OkStatus();
        if (done != cudaErrorNotReady) return CudaStatus(done, what);
      }
      if (abort_requested_) return absl::CancelledError(absl::StrCat(what, ": the communicator was aborted"));
      if (cancelled != nullptr && cancelled->load()) return absl::CancelledError(absl::StrCat(what, ": cancelled"));
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": the peer did not take part in time (its worker may be gone)"));
      }
      absl::SleepFor(kPollInterval);
    }
  }

  void AbortComm() {
    if (comm_ == nullptr) return;
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  const int device_;
  const int peer_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  DeviceCrc32 crc_;
  bool dead_ = false;
  std::atomic<bool> abort_requested_{false};
};

class NcclChannelFactory final : public PeerChannelFactory {
 public:
  explicit NcclChannelFactory(int device) : device_(device) {}

  absl::StatusOr<std::string> NewUniqueId() override {
    ncclUniqueId id;
    const ncclResult_t result = ncclGetUniqueId(&id);
    if (result != ncclSuccess) return NcclStatus(result, nullptr, "ncclGetUniqueId");
    return std::string(id.internal, sizeof(id.internal));
  }

  absl::StatusOr<std::unique_ptr<PeerChannel>> Join(const std::string& unique_id, int rank,
                                                    absl::Time deadline) override {
    if (unique_id.size() != NCCL_UNIQUE_ID_BYTES) {
      return absl::InvalidArgumentError(absl::StrFormat("an ncclUniqueId has %d bytes, this one %d",
                                                        NCCL_UNIQUE_ID_BYTES, unique_id.size()));
    }
    if (rank != 0 && rank != 1) return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " of a 2-rank pair"));
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), absl::StrCat("selecting GPU ", device_)));
    ncclUniqueId id;
    std::memcpy(id.internal, unique_id.data(), NCCL_UNIQUE_ID_BYTES);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    const ncclResult_t started = ncclCommInitRankConfig(&comm, 2, id, rank, &config);
    absl::Status status;
    if (started != ncclSuccess && started != ncclInProgress) {
      status = NcclStatus(started, comm, "ncclCommInitRankConfig");
    }
    while (status.ok()) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm, &async);
      if (queried != ncclSuccess) {
        status = NcclStatus(queried, comm, "joining the handoff communicator");
      } else if (async == ncclSuccess) {
        break;
      } else if (async != ncclInProgress) {
        status = NcclStatus(async, comm, "joining the handoff communicator");
      } else if (absl::Now() > deadline) {
        status = absl::DeadlineExceededError("joining the handoff communicator: the peer worker never joined");
      } else {
        absl::SleepFor(absl::Milliseconds(1));
      }
    }
    cudaStream_t stream = nullptr;
    if (status.ok()) {
      status = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "creating the handoff stream");
    }
    if (!status.ok()) {
      if (comm != nullptr) ncclCommAbort(comm);
      return status;
    }
    return std::unique_ptr<PeerChannel>(new NcclChannel(device_, /*peer=*/1 - rank, comm, stream));
  }

 private:
  const int device_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PeerChannelFactory>> MakeNcclChannelFactory(int device) {
  // Before NCCL reads its environment: multicast (NVLS) can take a shared host's GPUs out of service.
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/1);
  int count = 0;
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceCount(&count), "counting the GPUs"));
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GPU %d for the NCCL handoff: this machine has %d GPU%s", device, count,
                        count == 1 ? "" : "s"));
  }
  return std::unique_ptr<PeerChannelFactory>(new NcclChannelFactory(device));
}

}  // namespace indexcache
