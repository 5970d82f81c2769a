#include "common/parallel/communicator.h"

#include <barrier>
#include <cstring>

#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

// What the ranks of one in-process group share: where each rank's tensor lies during a reduction.
struct Exchange {
  explicit Exchange(int32_t size) : sync(size), tensors(size) {}
  std::barrier<> sync;
  std::vector<Tensor> tensors;
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Exchange> exchange, int32_t rank) : exchange_(std::move(exchange)), rank_(rank) {}

  int32_t rank() const override { return rank_; }
  int32_t size() const override { return static_cast<int32_t>(exchange_->tensors.size()); }

  absl::Status AllReduceSum(Backend& backend, Tensor x) override {
    // Every rank takes part in both barriers whatever it finds, so a refusal never leaves another
    // rank waiting: all refuse alike, since they check the same things.
    const bool host_f32 = backend.name() == "cpu" && x.dtype == DType::kF32;
    exchange_->tensors[rank_] = x;
    exchange_->sync.arrive_and_wait();  // every rank's tensor is published
    absl::Status status;
    if (!host_f32) {
      status = absl::FailedPreconditionError(absl::StrFormat(
          "the in-process group reduces F32 host tensors (the CPU backend), not %s on %s", DTypeName(x.dtype),
          backend.name()));
    } else {
      for (const Tensor& other : exchange_->tensors) {
        if (other.rows != x.rows || other.cols != x.cols) {
          status = absl::InvalidArgumentError(absl::StrFormat(
              "all-reduce of [%d, %d] on rank %d met [%d, %d] on another rank", x.rows, x.cols, rank_, other.rows,
              other.cols));
        }
      }
    }
    std::vector<float> sum;
    if (status.ok()) {
      sum.assign(static_cast<size_t>(x.rows * x.cols), 0.0f);
      for (const Tensor& t : exchange_->tensors) {  // rank order: the same bits everywhere
        for (int64_t r = 0; r < x.rows; ++r) {
          const float* row = t.row<float>(r);
          for (int64_t c = 0; c < x.cols; ++c) sum[r * x.cols + c] += row[c];
        }
      }
    }
    exchange_->sync.arrive_and_wait();  // every rank has read every other's tensor
    if (!status.ok()) return status;
    for (int64_t r = 0; r < x.rows; ++r) std::memcpy(x.row<float>(r), &sum[r * x.cols], x.cols * sizeof(float));
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<Exchange> exchange_;
  int32_t rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeInProcessGroup(int32_t size) {
  auto exchange = std::make_shared<Exchange>(size);
  std::vector<std::unique_ptr<Communicator>> group;
  for (int32_t r = 0; r < size; ++r) group.push_back(std::make_unique<InProcessCommunicator>(exchange, r));
  return group;
}

}  // namespace indexcache
