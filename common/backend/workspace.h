// Scratch memory for one forward pass, planned before it runs: the caller carves every activation it
// needs once in a measuring pass (no memory touched), the workspace grows its buffer to fit, and the
// same carving then hands out real views. The buffer is kept between passes, so steady-state decode
// allocates nothing — the property a CUDA graph replay needs.
#pragma once

#include "absl/status/status.h"
#include "common/backend/backend.h"

namespace indexcache {

class Workspace {
 public:
  explicit Workspace(Backend* backend) : backend_(backend) {}

  // Starts a measuring pass: Take returns views with null data and only counts bytes.
  void BeginMeasure() { measuring_ = true; offset_ = 0; }
  // Ends the measuring pass and makes the buffer at least as large as measured; the next Take
  // calls (after this returns) hand out real memory from the start.
  absl::Status Commit();

  Tensor Take(DType dtype, int64_t rows, int64_t cols);

 private:
  Backend* backend_;
  Buffer buffer_;
  bool measuring_ = false;
  size_t offset_ = 0;
};

}  // namespace indexcache
