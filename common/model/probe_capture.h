// The indexer probes of a prefill's last chunk (IndexerProbe: what the decode worker re-runs to check
// the handoff), taken off the device in stream order as each Full layer computes them and read after
// the pass's final synchronization. Downloading them on the spot would drain the stream three times
// per Full layer (the GPU idles while the host catches up); copied in order into pinned memory, a
// pass with probes waits on the device no more often than one without.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/backend/backend.h"
#include "common/model/activations.h"
#include "common/model/indexer_probe.h"

namespace indexcache {

class ProbeCapture {
 public:
  explicit ProbeCapture(Backend& backend) : backend_(backend) {}

  // Starts a pass that captures `rows` probe rows on each of `full_layers` layers from `a`.
  absl::Status Begin(const Activations& a, int64_t rows, int64_t full_layers);
  // Enqueues the copies of probe row `probe`'s (batch row `row`'s) query, head weights and selection
  // on Full layer `layer`, as `a` holds them now.
  void Capture(const Activations& a, int64_t probe, int32_t row, int32_t layer);
  // After the pass has synchronized: per probe row, its probes in layer order.
  std::vector<std::vector<IndexerProbe>> Take() const;

 private:
  struct Captured {
    int64_t probe;
    int32_t layer;
    size_t offset;  // of the query; the head weights and the selection follow
  };
  // One row of `t` as float (widened from bf16) or int32 values, from `bytes`.
  template <typename T>
  static std::vector<T> Values(const Tensor& t, const char* bytes);

  Backend& backend_;
  HostBuffer landing_;  // grows to the largest pass
  Tensor query_, weights_, topk_;  // shapes and dtypes of the pass's rows
  size_t row_bytes_ = 0;           // one capture: query + weights + selection
  int64_t rows_ = 0;
  std::vector<Captured> captured_;
};

}  // namespace indexcache
