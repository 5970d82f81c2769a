// The collectives a model sharded across the ranks of one group needs (tensor- and expert-parallel
// DsaModel, common/model/model_shard.h): every rank's partial sum of a sublayer's output becomes the
// whole sum on every rank. One implementation runs the ranks as threads of one process on the CPU
// backend — what the tests use to prove that a sharded model computes the single-rank model's result;
// GPUs take NCCL's all-reduce behind the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/backend/backend.h"

namespace indexcache {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int32_t rank() const = 0;
  virtual int32_t size() const = 0;
  // `x` (F32) becomes, on every rank, the element-wise sum of every rank's `x`, added in rank order so
  // that every rank holds the same bits. Every rank of the group calls it for the same shapes in the
  // same order, once the ops that wrote `x` are enqueued on `backend`.
  virtual absl::Status AllReduceSum(Backend& backend, Tensor x) = 0;
};

// `size` communicators over one exchange in this process, rank i at index i: each rank's thread calls
// its own. They reduce host memory, so they serve the CPU backend (whose tensors live there).
std::vector<std::unique_ptr<Communicator>> MakeInProcessGroup(int32_t size);

}  // namespace indexcache
