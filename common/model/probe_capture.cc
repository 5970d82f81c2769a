#include "common/model/probe_capture.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/safetensors/dtype.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

size_t RowBytes(const Tensor& t) { return static_cast<size_t>(t.cols) * DTypeSize(t.dtype); }

}  // namespace

absl::Status ProbeCapture::Begin(const Activations& a, int64_t rows, int64_t full_layers) {
  query_ = a.index_q;
  weights_ = a.index_w;
  topk_ = a.topk;
  row_bytes_ = RowBytes(query_) + RowBytes(weights_) + RowBytes(topk_);
  rows_ = rows;
  captured_.clear();
  const size_t need = row_bytes_ * static_cast<size_t>(rows * full_layers);
  if (need > landing_.bytes()) {
    ASSIGN_OR_RETURN(landing_, backend_.AllocateHost(need));
  }
  return absl::OkStatus();
}

void ProbeCapture::Capture(const Activations& a, int64_t probe, int32_t row, int32_t layer) {
  const size_t offset = captured_.size() * row_bytes_;
  char* at = static_cast<char*>(landing_.data()) + offset;
  backend_.DownloadInOrder(a.index_q.Rows(row, 1), at);
  at += RowBytes(query_);
  backend_.DownloadInOrder(a.index_w.Rows(row, 1), at);
  at += RowBytes(weights_);
  backend_.DownloadInOrder(a.topk.Rows(row, 1), at);
  captured_.push_back({probe, layer, offset});
}

template <typename T>
std::vector<T> ProbeCapture::Values(const Tensor& t, const char* bytes) {
  std::vector<T> values(static_cast<size_t>(t.cols));
  if (t.dtype == DType::kBF16) {
    uint16_t bits;
    for (size_t i = 0; i < values.size(); ++i) {
      std::memcpy(&bits, bytes + i * sizeof(bits), sizeof(bits));
      values[i] = Bf16ToF32(bits);
    }
  } else {
    std::memcpy(values.data(), bytes, values.size() * sizeof(T));  // F32 as float, I32 as int32
  }
  return values;
}

std::vector<std::vector<IndexerProbe>> ProbeCapture::Take() const {
  std::vector<std::vector<IndexerProbe>> probes(static_cast<size_t>(rows_));
  for (const Captured& c : captured_) {
    const char* at = static_cast<const char*>(landing_.data()) + c.offset;
    IndexerProbe& probe = probes[c.probe].emplace_back();
    probe.layer = c.layer;
    probe.query = Values<float>(query_, at);
    probe.head_weights = Values<float>(weights_, at + RowBytes(query_));
    probe.topk = Values<int32_t>(topk_, at + RowBytes(query_) + RowBytes(weights_));
    probe.topk.erase(std::find(probe.topk.begin(), probe.topk.end(), -1), probe.topk.end());
  }
  return probes;
}

}  // namespace indexcache
