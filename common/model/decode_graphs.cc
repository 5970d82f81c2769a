#include "common/model/decode_graphs.h"

#include <bit>

#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache {

int64_t DecodeGraphs::RowsBucket(int64_t n) {
  if (n < 1 || n > kMaxRows) return 0;
  return static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(n)));
}

int32_t DecodeGraphs::ContextBucket(int32_t max_context) {
  const uint32_t c = static_cast<uint32_t>(std::max(max_context, 1));
  const uint32_t granule = std::max<uint32_t>(256, std::bit_floor(c) / 8);
  return static_cast<int32_t>((c + granule - 1) / granule * granule);
}

DecodeGraphs::Bucket* DecodeGraphs::Find(const Shape& shape) {
  for (auto it = buckets_.begin(); it != buckets_.end(); ++it) {
    if (it->shape == shape) {
      buckets_.splice(buckets_.begin(), buckets_, it);
      return &buckets_.front();
    }
  }
  return nullptr;
}

absl::StatusOr<Activations*> DecodeGraphs::ActivationsFor(const ModelConfig& c, const Shape& shape, int64_t max_blocks,
                                                          int64_t topk_cols) {
  if (Bucket* b = Find(shape)) return &b->activations;
  if (buckets_.size() >= kMaxGraphs) buckets_.pop_back();
  buckets_.emplace_front(backend_);
  Bucket& b = buckets_.front();
  b.shape = shape;
  b.workspace.BeginMeasure();
  Carve(c, backend_->activation_dtype(), shape.rows, shape.rows, max_blocks, topk_cols, shape.rows, b.workspace);
  if (absl::Status s = b.workspace.Commit(); !s.ok()) {
    buckets_.pop_front();
    return s;
  }
  b.activations = Carve(c, backend_->activation_dtype(), shape.rows, shape.rows, max_blocks, topk_cols, shape.rows, b.workspace);
  return &b.activations;
}

absl::Status DecodeGraphs::Run(const Shape& shape, const std::function<void()>& enqueue) {
  Bucket* b = Find(shape);
  if (b == nullptr) return absl::InternalError("decode graph: the bucket's activations were not carved");
  if (b->graph != nullptr && b->epoch == backend_->scratch_epoch()) {
    ++replays_;
    return b->graph->Replay();
  }
  b->graph.reset();
  enqueue();  // this step's result; sizes every scratch area the recording will use
  RETURN_IF_ERROR(backend_->BeginCapture());
  enqueue();
  ASSIGN_OR_RETURN(b->graph, backend_->EndCapture());
  b->epoch = backend_->scratch_epoch();
  ++recordings_;
  IC_LOG(Info) << "decode graph recorded for " << shape.rows << " rows at context " << shape.context << ": "
               << b->graph->size() << " ops";
  return absl::OkStatus();
}

}  // namespace indexcache
