// The decode step as recorded graphs (CUDA graphs on the CUDA backend), one per bucket of batch rows
// and context length, as vLLM and SGLang do. A step of n sequences at max context C runs padded to
// the bucket (RowsBucket(n), ContextBucket(C)): the ops' launch shapes depend on rows and on the
// host-known max context, while every kernel reads each row's true position from device memory and
// skips what lies past it, so one recording serves every step of its bucket. Each bucket owns the
// activations its recording points at; the step's metadata is uploaded into them before the replay.
//
// A bucket's first step (and the first after the backend's scratch moved) runs op by op — its result
// is the step's, and it sizes the backend's scratch — then the same ops are recorded for later steps.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/backend/workspace.h"
#include "common/model/activations.h"
#include "common/model/model_config.h"

namespace indexcache {

class DecodeGraphs {
 public:
  struct Shape {
    int64_t rows = 0;     // padded batch rows (= sequences)
    int32_t context = 0;  // padded max context
    bool sampled = false;  // the step draws tokens on the device (ForwardBatch::draws)
    std::vector<IndexerType> types;  // the pattern every row runs (adaptive patterns record one graph each)
    bool operator==(const Shape&) const = default;
  };
  // Larger decode batches run op by op (their launches are amortized over many rows anyway).
  static constexpr int64_t kMaxRows = 64;
  // Recordings kept; the least recently used goes first. Decode contexts only grow, so old context
  // buckets fall out of use.
  static constexpr size_t kMaxGraphs = 24;

  // The power of two >= n (n <= kMaxRows), 0 when n is out of range.
  static int64_t RowsBucket(int64_t n);
  // max_context rounded up to a multiple of an eighth of its power-of-two octave (at least 256):
  // at most 12.5% of the indexer's key range is padding, and a context crosses a bucket every
  // ~C/8 tokens.
  static int32_t ContextBucket(int32_t max_context);

  explicit DecodeGraphs(Backend* backend) : backend_(backend) {}

  // The activations of `shape`'s bucket (carved on first use and kept).
  absl::StatusOr<Activations*> ActivationsFor(const ModelConfig& c, const Shape& shape, int64_t max_blocks,
                                              int64_t topk_cols);
  // Runs the bucket's pass, whose metadata is already uploaded into its activations: replays its
  // recording, or calls `enqueue` (which enqueues every op of the pass on its activations) to run the
  // pass now and then again under capture, to record it.
  absl::Status Run(const Shape& shape, const std::function<void()>& enqueue);

  // Steps replayed and recordings made since construction.
  int64_t replays() const { return replays_; }
  int64_t recordings() const { return recordings_; }

 private:
  struct Bucket {
    Shape shape;
    Workspace workspace;
    Activations activations;
    std::unique_ptr<CapturedOps> graph;
    uint64_t epoch = 0;  // the backend's scratch epoch the graph was recorded under
    explicit Bucket(Backend* backend) : workspace(backend) {}
  };
  Bucket* Find(const Shape& shape);  // moves it to the front (most recently used)

  Backend* backend_;
  std::list<Bucket> buckets_;  // most recently used first; list: activations never move
  int64_t replays_ = 0;
  int64_t recordings_ = 0;
};

}  // namespace indexcache
