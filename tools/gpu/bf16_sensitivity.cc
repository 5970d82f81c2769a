// bf16_sensitivity: how far bf16 rounding alone moves a golden case's logits, measured on the CPU
// backend (no GPU needed). It runs the model through a backend that is the CPU backend except that
// it rounds to bf16 where the CUDA backend's values become bf16 — the weights at upload and, with
// --inputs, every matrix product's activation input (Linear, HeadwiseLinear, the indexer's queries
// and keys, sparse MLA's queries and latent rows): each BF16 activation and cache row of the CUDA
// model is consumed there. (The CUDA model also rounds a few values one step earlier — a projection's
// output before its in-place norm or RoPE, SwiGLU's input, the indexer's head weights; those extra
// roundings are not reproduced.) It prints the worst logit error against transformers' float32
// logits, relative to the row's largest logit. This is the yardstick for cuda_engine_check:
// on random-weight models with top-k and MoE routing, bf16 rounding flips discrete decisions and
// moves logits far more than bf16 noise, in the reference arithmetic as on the GPU.
//   bf16_sensitivity [--inputs] CASE_DIR...    (tests/data/goldens/<case>; run from the repo root)
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/backend/cpu/cpu_backend.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "common/model/model_config.h"
#include "common/safetensors/dtype.h"
#include "common/safetensors/safetensors_file.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

float RoundToBf16(float v) { return Bf16ToF32(F32ToBf16(v)); }

// A dense bf16-rounded copy of an F32 tensor; `view` points into `values`.
struct Rounded {
  std::vector<float> values;
  Tensor view;
};

Rounded RoundCopy(Tensor t) {
  Rounded r;
  r.values.resize(t.numel());
  for (int64_t i = 0; i < t.rows; ++i) {
    for (int64_t j = 0; j < t.cols; ++j) r.values[i * t.cols + j] = RoundToBf16(t.row<float>(i)[j]);
  }
  r.view = Tensor::Matrix(r.values.data(), DType::kF32, t.rows, t.cols);
  return r;
}

// The CPU backend with the CUDA backend's bf16 rounding points (see the file comment).
class Bf16RoundingBackend final : public Backend {
 public:
  explicit Bf16RoundingBackend(bool round_inputs) : round_inputs_(round_inputs) {}
  std::string_view name() const override { return "cpu, bf16-rounded"; }
  DType weight_dtype() const override { return DType::kF32; }
  absl::StatusOr<Buffer> Allocate(size_t bytes) override { return cpu_.Allocate(bytes); }
  void Free(void* data) override { cpu_.Free(data); }
  // The model uploads F32 only for weights (batch metadata is I32): round them, as the CUDA backend
  // stores them in bf16.
  void Upload(const void* host, Tensor dst) override {
    cpu_.Upload(host, dst);
    if (dst.dtype != DType::kF32) return;
    for (int64_t i = 0; i < dst.rows; ++i) {
      for (int64_t j = 0; j < dst.cols; ++j) dst.row<float>(i)[j] = RoundToBf16(dst.row<float>(i)[j]);
    }
  }
  absl::Status Download(Tensor src, void* host) override { return cpu_.Download(src, host); }
  absl::StatusOr<std::unique_ptr<AsyncHostCopy>> DownloadRowsAsync(Tensor src, absl::Span<const RowRun> runs,
                                                                   char* host) override {
    return cpu_.DownloadRowsAsync(src, runs, host);
  }
  void UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                  std::shared_ptr<const void> keep) override {
    cpu_.UploadRows(host, runs, dst, std::move(keep));
  }
  void DownloadInOrder(Tensor src, char* host) override { cpu_.DownloadInOrder(src, host); }
  absl::Status Synchronize() override { return cpu_.Synchronize(); }
  void Fill(Tensor dst, float value) override { cpu_.Fill(dst, value); }
  void Embedding(Tensor table, Tensor ids, Tensor out) override { cpu_.Embedding(table, ids, out); }
  void Linear(Tensor x, Tensor w, Tensor out) override {
    if (!round_inputs_) return cpu_.Linear(x, w, out);
    Rounded rx = RoundCopy(x);
    cpu_.Linear(rx.view, w, out);
  }
  void LinearAdd(Tensor x, Tensor w, Tensor out) override {
    if (!round_inputs_) return cpu_.LinearAdd(x, w, out);
    Rounded rx = RoundCopy(x);
    cpu_.LinearAdd(rx.view, w, out);
  }
  void HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) override {
    if (!round_inputs_) return cpu_.HeadwiseLinear(x, w, heads, out);
    Rounded rx = RoundCopy(x);
    cpu_.HeadwiseLinear(rx.view, w, heads, out);
  }
  void RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) override { cpu_.RmsNorm(x, weight, eps, out); }
  void LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) override {
    cpu_.LayerNorm(x, weight, bias, eps, out);
  }
  void RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                       float theta, Tensor token_pos) override {
    cpu_.RopeInterleaved(x, heads, head_stride, rope_offset, rope_dim, theta, token_pos);
  }
  void SiluMul(Tensor gate_up, Tensor out) override { cpu_.SiluMul(gate_up, out); }
  void Add(Tensor x, Tensor y) override { cpu_.Add(x, y); }
  void GatherRows(Tensor src, Tensor row_ids, Tensor dst) override { cpu_.GatherRows(src, row_ids, dst); }
  void ArgMax(Tensor x, Tensor out) override { cpu_.ArgMax(x, out); }
  void SampleTokens(Tensor x, Tensor draws, Tensor out) override { cpu_.SampleTokens(x, draws, out); }
  void WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) override {
    cpu_.WriteCacheRows(src, slot_mapping, pool);
  }
  void IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const BatchLayout& batch,
                   float scale, Tensor out) override {
    if (!round_inputs_) return cpu_.IndexerTopK(q, head_weights, heads, key_pool, batch, scale, out);
    Rounded rq = RoundCopy(q), rk = RoundCopy(key_pool);
    cpu_.IndexerTopK(rq.view, head_weights, heads, rk.view, batch, scale, out);
  }
  void SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool, const BatchLayout& batch,
                          Tensor indices, float scale, Tensor out) override {
    if (!round_inputs_) return cpu_.SparseMlaAttention(q_latent, q_rope, heads, latent_pool, batch, indices, scale, out);
    Rounded rl = RoundCopy(q_latent), rr = RoundCopy(q_rope), rp = RoundCopy(latent_pool);
    cpu_.SparseMlaAttention(rl.view, rr.view, heads, rp.view, batch, indices, scale, out);
  }
  void MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing, Tensor topk_ids,
                Tensor topk_weights) override {
    cpu_.MoeRoute(x, gate_w, correction_bias, routing, topk_ids, topk_weights);
  }
  void MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, Tensor topk_ids, Tensor topk_weights,
                  Tensor out, int32_t first_expert) override {
    cpu_.MoeExperts(x, gate_up, down, num_experts, topk_ids, topk_weights, out, first_expert);
  }
  void BeginRegion(TimedRegion region) override { cpu_.BeginRegion(region); }
  void EndRegion(TimedRegion region) override { cpu_.EndRegion(region); }
  double TakeRegionSeconds(TimedRegion region) override { return cpu_.TakeRegionSeconds(region); }

 private:
  bool round_inputs_;
  CpuBackend cpu_{0};
};

// Worst |ours - transformers| / max|transformers row| over every row of the case's prompt.
absl::StatusOr<double> WorstLogitError(const std::string& case_dir, bool round_inputs) {
  std::ifstream in(case_dir + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json expected = nlohmann::json::parse(text.str(), nullptr, false);
  if (expected.is_discarded()) return absl::NotFoundError(case_dir + "/expected.json is missing or not JSON");
  const std::vector<int32_t> ids = expected["input_ids"].get<std::vector<int32_t>>();
  ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(case_dir + "/expected.safetensors"));
  const TensorView* want = file.Find("logits");
  if (want == nullptr) return absl::NotFoundError(case_dir + ": no full 'logits' tensor (a tiny case is needed)");
  Bf16RoundingBackend backend(round_inputs);
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(case_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<DsaModel> model, DsaModel::Load(case_dir, config, &backend));
  ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache, PagedKvCache::Create(&backend, model->CacheSpec(16), 16 << 20));
  RETURN_IF_ERROR(cache->Reserve(0, static_cast<int32_t>(ids.size())));
  ForwardBatch batch;
  batch.token_ids = ids;
  batch.sequences = {0};
  for (size_t i = 0; i < ids.size(); ++i) {
    batch.positions.push_back(static_cast<int32_t>(i));
    batch.token_seq.push_back(0);
    batch.logit_rows.push_back(static_cast<int32_t>(i));
  }
  ASSIGN_OR_RETURN(ForwardResult result, model->Forward(batch, *cache));
  const float* golden = reinterpret_cast<const float*>(want->data);
  const int64_t vocab = config.vocab_size;
  double worst = 0.0;
  for (size_t row = 0; row < ids.size(); ++row) {
    double scale = 0.0;
    for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::abs(static_cast<double>(golden[row * vocab + v])));
    for (int64_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::abs(result.logits[row * vocab + v] - golden[row * vocab + v]) / scale);
    }
  }
  return worst;
}

}  // namespace
}  // namespace indexcache

int main(int argc, char** argv) {
  bool round_inputs = false;
  int status = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--inputs") {
      round_inputs = true;
      continue;
    }
    auto worst = indexcache::WorstLogitError(arg, round_inputs);
    if (!worst.ok()) {
      std::fprintf(stderr, "bf16_sensitivity: %s\n", std::string(worst.status().message()).c_str());
      status = 1;
      continue;
    }
    std::printf("%s: bf16 weights%s: worst logit error %.4f of the row's largest logit\n", arg.c_str(),
                round_inputs ? " and matrix inputs" : "", *worst);
  }
  if (argc < 2) std::fprintf(stderr, "usage: bf16_sensitivity [--inputs] CASE_DIR...\n");
  return argc < 2 ? 2 : status;
}
