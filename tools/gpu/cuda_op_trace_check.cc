// GPU check (run by tools/gpu/check_cuda.sh, not by ctest): the whole forward pass of real models on
// the CUDA backend, judged op by op. A tracing backend runs every op on the GPU and, on host copies of
// the very inputs the GPU op read (taken from the GPU just before), on the CPU backend, and compares
// the two outputs. Each op is so judged on its own inputs: a small bf16 difference early in the pass
// cannot snowball into a failure later (random-weight MoE models amplify such differences through
// routing flips), and a wrong op is named exactly. Selections (indexer top-k, MoE routing) must agree
// except at near-ties that the check detects from the CPU's float scores and a bf16 error bound.

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/backend/backend.h"
#include "common/backend/cpu/cpu_backend.h"
#include "common/backend/cuda/cuda_backend.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "common/model/model_config.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr double kUnitRoundoff = 1.0 / 256.0;

// A dense host copy of a device tensor (bf16 widened to f32).
struct HostCopy {
  std::vector<float> f;
  std::vector<int32_t> i;
  Tensor t;
};

class TracingBackend final : public Backend {
 public:
  explicit TracingBackend(CudaBackend* gpu) : gpu_(gpu) {}

  std::string_view name() const override { return "cuda (traced)"; }
  DType weight_dtype() const override { return gpu_->weight_dtype(); }
  DType activation_dtype() const override { return gpu_->activation_dtype(); }
  absl::StatusOr<Buffer> Allocate(size_t bytes) override {
    auto b = gpu_->Allocate(bytes);
    if (!b.ok()) return b.status();
    void* data = b->data();
    owned_.push_back(std::move(*b));
    return Buffer(this, data, bytes);
  }
  void Free(void* data) override {
    for (auto it = owned_.begin(); it != owned_.end(); ++it) {
      if (it->data() == data) {
        owned_.erase(it);
        return;
      }
    }
  }
  void Upload(const void* host, Tensor dst) override { gpu_->Upload(host, dst); }
  absl::Status Download(Tensor src, void* host) override { return gpu_->Download(src, host); }
  absl::StatusOr<HostBuffer> AllocateHost(size_t bytes) override { return gpu_->AllocateHost(bytes); }
  absl::StatusOr<std::unique_ptr<AsyncHostCopy>> DownloadRowsAsync(Tensor src, absl::Span<const RowRun> runs,
                                                                   char* host) override {
    return gpu_->DownloadRowsAsync(src, runs, host);
  }
  void UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                  std::shared_ptr<const void> keep) override {
    gpu_->UploadRows(host, runs, dst, std::move(keep));
  }
  void DownloadInOrder(Tensor src, char* host) override { gpu_->DownloadInOrder(src, host); }
  absl::Status Synchronize() override { return gpu_->Synchronize(); }
  void Fill(Tensor dst, float value) override { gpu_->Fill(dst, value); }

  void Embedding(Tensor table, Tensor ids, Tensor out) override {
    HostCopy ht = Pull(table), hi = Pull(ids), ho = Pull(out);
    gpu_->Embedding(table, ids, out);
    cpu_.Embedding(ht.t, hi.t, ho.t);
    Compare("embedding", out, ho, 1e-6);
  }
  void Linear(Tensor x, Tensor w, Tensor out) override {
    HostCopy hx = Pull(x), hw = Pull(w), ho = Pull(out);
    gpu_->Linear(x, w, out);
    cpu_.Linear(hx.t, hw.t, ho.t);
    Compare("linear", out, ho, 2e-2);
  }
  void LinearAdd(Tensor x, Tensor w, Tensor out) override {
    HostCopy hx = Pull(x), hw = Pull(w), ho = Pull(out);
    gpu_->LinearAdd(x, w, out);
    cpu_.LinearAdd(hx.t, hw.t, ho.t);
    Compare("linear add", out, ho, 2e-2);
  }
  void HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) override {
    HostCopy hx = Pull(x), hw = Pull(w), ho = Pull(out);
    gpu_->HeadwiseLinear(x, w, heads, out);
    cpu_.HeadwiseLinear(hx.t, hw.t, heads, ho.t);
    Compare("headwise linear", out, ho, 2e-2);
  }
  void RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) override {
    HostCopy hx = Pull(x), hw = Pull(weight), ho = Pull(out);
    gpu_->RmsNorm(x, weight, eps, out);
    cpu_.RmsNorm(hx.t, hw.t, eps, ho.t);
    Compare("rms norm", out, ho, 1e-4);
  }
  void LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) override {
    HostCopy hx = Pull(x), hw = Pull(weight), hb = Pull(bias), ho = Pull(out);
    gpu_->LayerNorm(x, weight, bias, eps, out);
    cpu_.LayerNorm(hx.t, hw.t, hb.t, eps, ho.t);
    Compare("layer norm", out, ho, 1e-4);
  }
  void RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                       float theta, Tensor token_pos) override {
    HostCopy hx = Pull(x), hp = Pull(token_pos);
    gpu_->RopeInterleaved(x, heads, head_stride, rope_offset, rope_dim, theta, token_pos);
    cpu_.RopeInterleaved(hx.t, heads, head_stride, rope_offset, rope_dim, theta, hp.t);
    Compare("rope", x, hx, 1e-4);
  }
  void SiluMul(Tensor gate_up, Tensor out) override {
    HostCopy hg = Pull(gate_up), ho = Pull(out);
    gpu_->SiluMul(gate_up, out);
    cpu_.SiluMul(hg.t, ho.t);
    Compare("silu·mul", out, ho, 1e-4);
  }
  void Add(Tensor x, Tensor y) override {
    HostCopy hx = Pull(x), hy = Pull(y);
    gpu_->Add(x, y);
    cpu_.Add(hx.t, hy.t);
    Compare("add", x, hx, 1e-5);
  }
  void GatherRows(Tensor src, Tensor row_ids, Tensor dst) override {
    HostCopy hs = Pull(src), hi = Pull(row_ids), hd = Pull(dst);
    gpu_->GatherRows(src, row_ids, dst);
    cpu_.GatherRows(hs.t, hi.t, hd.t);
    Compare("gather rows", dst, hd, 0.0);
  }
  void ArgMax(Tensor x, Tensor out) override {
    HostCopy hx = Pull(x), ho = Pull(out);
    gpu_->ArgMax(x, out);
    cpu_.ArgMax(hx.t, ho.t);
    EXPECT_EQ(Pull(out).i, ho.i) << where_ << ": argmax differs from the CPU backend on the same logits";
  }
  // The sampling kernel has its own check with boundary detection (cuda_sampling_check.cc); on the
  // logits a trace reaches it must draw what the CPU backend draws.
  void SampleTokens(Tensor x, Tensor draws, Tensor out) override {
    HostCopy hx = Pull(x), hd = Pull(draws), ho = Pull(out);
    gpu_->SampleTokens(x, draws, out);
    cpu_.SampleTokens(hx.t, hd.t, ho.t);
    EXPECT_EQ(Pull(out).i, ho.i) << where_ << ": sampled tokens differ from the CPU backend on the same logits";
  }
  void WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) override {
    HostCopy hs = Pull(src), hm = Pull(slot_mapping), hp = Pull(pool);
    gpu_->WriteCacheRows(src, slot_mapping, pool);
    cpu_.WriteCacheRows(hs.t, hm.t, hp.t);
    Compare("write cache rows", pool, hp, 0.0);
  }
  void IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const BatchLayout& batch,
                   float scale, Tensor out) override {
    HostCopy hq = Pull(q), hw = Pull(head_weights), hk = Pull(key_pool), seq = Pull(batch.token_seq),
             pos = Pull(batch.token_pos), tables = Pull(batch.block_tables);
    gpu_->IndexerTopK(q, head_weights, heads, key_pool, batch, scale, out);
    HostCopy got = Pull(out);
    const int64_t dim = key_pool.cols;
    int64_t near_ties = 0;
    for (int64_t r = 0; r < q.rows; ++r) {
      const int32_t length = pos.i[r] + 1, k = std::min<int32_t>(static_cast<int32_t>(out.cols), length);
      std::vector<double> score(length), bound(length);
      for (int32_t s = 0; s < length; ++s) {
        const int64_t slot = int64_t{tables.i[seq.i[r] * batch.block_tables.cols + s / batch.block_size]} *
                                 batch.block_size + s % batch.block_size;
        const float* key = &hk.f[slot * dim];
        double total = 0.0, err = 0.0;
        for (int32_t h = 0; h < heads; ++h) {
          const float* qh = &hq.f[(r * heads + h) * dim];
          double dot = 0.0, abs_dot = 0.0;
          for (int64_t d = 0; d < dim; ++d) {
            dot += static_cast<double>(qh[d]) * key[d];
            abs_dot += std::abs(static_cast<double>(qh[d]) * key[d]);
          }
          const double w = hw.f[r * heads + h];
          total += w * std::max(dot * scale, 0.0);
          err += std::abs(w) * scale * (2.01 * kUnitRoundoff * abs_dot + 1e-6 * abs_dot);
        }
        score[s] = total;
        bound[s] = err + 1e-6 * std::abs(total);
      }
      std::set<int32_t> picked(got.i.begin() + r * out.cols, got.i.begin() + r * out.cols + k);
      EXPECT_EQ(static_cast<int32_t>(picked.size()), k) << where_ << ": indexer row " << r << " picks repeat";
      EXPECT_TRUE(*picked.begin() >= 0 && *picked.rbegin() < length) << where_ << ": indexer row " << r << " out of range";
      double worst_pick = INFINITY, best_left = -INFINITY, exact_worst = INFINITY, exact_best_left = -INFINITY;
      for (int32_t s = 0; s < length; ++s) {
        if (picked.count(s)) {
          worst_pick = std::min(worst_pick, score[s] + bound[s]);
          exact_worst = std::min(exact_worst, score[s]);
        } else {
          best_left = std::max(best_left, score[s] - bound[s]);
          exact_best_left = std::max(exact_best_left, score[s]);
        }
      }
      EXPECT_GE(worst_pick, best_left) << where_ << ": indexer row " << r << " picks beyond the bf16 bound";
      near_ties += exact_worst < exact_best_left;
    }
    stats_["indexer rows at near-ties"] += near_ties;
    stats_["indexer rows"] += q.rows;
  }
  void SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool, const BatchLayout& batch,
                          Tensor indices, float scale, Tensor out) override {
    HostCopy hl = Pull(q_latent), hr = Pull(q_rope), hp = Pull(latent_pool), seq = Pull(batch.token_seq),
             pos = Pull(batch.token_pos), tables = Pull(batch.block_tables), hi = Pull(indices), ho = Pull(out);
    gpu_->SparseMlaAttention(q_latent, q_rope, heads, latent_pool, batch, indices, scale, out);
    BatchLayout host{seq.t, pos.t, Tensor{}, tables.t, batch.block_size, batch.max_context};
    cpu_.SparseMlaAttention(hl.t, hr.t, heads, hp.t, host, hi.t, scale, ho.t);
    Compare("sparse MLA", out, ho, 3e-2);
  }
  void MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing, Tensor topk_ids,
                Tensor topk_weights) override {
    HostCopy hx = Pull(x), hg = Pull(gate_w), hb = Pull(correction_bias), ids = Pull(topk_ids), wts = Pull(topk_weights);
    gpu_->MoeRoute(x, gate_w, correction_bias, routing, topk_ids, topk_weights);
    cpu_.MoeRoute(hx.t, hg.t, hb.t, routing, ids.t, wts.t);
    HostCopy got = Pull(topk_ids);
    // A differing pick is a near-tie when the CPU's router logits of the two experts are within the
    // bf16 bound of the logit (u·Σ|x·g|, computed from absolute values).
    std::vector<float> logits(x.rows * gate_w.rows), abs_logits(x.rows * gate_w.rows);
    HostCopy ax = hx, ag = hg;
    for (float& v : ax.f) v = std::abs(v);
    for (float& v : ag.f) v = std::abs(v);
    ax.t.data = ax.f.data();
    ag.t.data = ag.f.data();
    cpu_.Linear(hx.t, hg.t, Tensor::Matrix(logits.data(), DType::kF32, x.rows, gate_w.rows));
    cpu_.Linear(ax.t, ag.t, Tensor::Matrix(abs_logits.data(), DType::kF32, x.rows, gate_w.rows));
    int64_t near_ties = 0;
    for (int64_t r = 0; r < x.rows; ++r) {
      std::set<int32_t> want(ids.i.begin() + r * routing.top_k, ids.i.begin() + (r + 1) * routing.top_k);
      std::set<int32_t> have(got.i.begin() + r * routing.top_k, got.i.begin() + (r + 1) * routing.top_k);
      if (want == have) continue;
      ++near_ties;
      for (int32_t e : have) {
        if (want.count(e)) continue;
        bool close = false;
        for (int32_t o : want) {
          if (have.count(o)) continue;
          const int64_t a = r * gate_w.rows + e, b = r * gate_w.rows + o;
          const double choice_a = 1.0 / (1.0 + std::exp(-logits[a])) + hb.f[e];
          const double choice_b = 1.0 / (1.0 + std::exp(-logits[b])) + hb.f[o];
          close |= std::abs(choice_a - choice_b) <= 0.25 * kUnitRoundoff * (abs_logits[a] + abs_logits[b]) + 1e-6;
        }
        EXPECT_TRUE(close) << where_ << ": MoE routing of row " << r << " picks expert " << e << " beyond a near-tie";
      }
    }
    stats_["moe routing rows at near-ties"] += near_ties;
    stats_["moe routing rows"] += x.rows;
  }
  void MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, Tensor topk_ids, Tensor topk_weights,
                  Tensor out, int32_t first_expert) override {
    HostCopy hx = Pull(x), hg = Pull(gate_up), hd = Pull(down), hi = Pull(topk_ids), hw = Pull(topk_weights), ho = Pull(out);
    gpu_->MoeExperts(x, gate_up, down, num_experts, topk_ids, topk_weights, out, first_expert);
    cpu_.MoeExperts(hx.t, hg.t, hd.t, num_experts, hi.t, hw.t, ho.t, first_expert);
    Compare("moe experts", out, ho, 3e-2);
  }
  void BeginRegion(TimedRegion region) override { gpu_->BeginRegion(region); }
  void EndRegion(TimedRegion region) override { gpu_->EndRegion(region); }
  double TakeRegionSeconds(TimedRegion region) override { return gpu_->TakeRegionSeconds(region); }

  void set_where(std::string where) { where_ = std::move(where); }
  void PrintSummary() const {
    for (const auto& [op, worst] : worst_) std::printf("    %-18s worst |gpu - cpu| / max|cpu| = %.2e\n", op.c_str(), worst);
    for (const auto& [what, count] : stats_) std::printf("    %-30s %ld\n", what.c_str(), static_cast<long>(count));
  }

 private:
  HostCopy Pull(Tensor t) {
    HostCopy h;
    if (t.empty()) return h;
    const absl::Status synced = gpu_->Synchronize();
    EXPECT_TRUE(synced.ok()) << where_ << ": " << synced;
    if (t.dtype == DType::kI32) {
      h.i.resize(t.numel());
      EXPECT_TRUE(gpu_->Download(t, h.i.data()).ok());
      h.t = Tensor::Matrix(h.i.data(), DType::kI32, t.rows, t.cols);
      return h;
    }
    h.f.resize(t.numel());
    EXPECT_TRUE(gpu_->Download(t, h.f.data()).ok());  // bf16 widened
    h.t = Tensor::Matrix(h.f.data(), DType::kF32, t.rows, t.cols);
    return h;
  }

  // max |gpu - cpu| over the tensor, relative to max |cpu|, must stay within `tolerance`, plus the
  // rounding of a BF16 output (round to nearest: at most u = 2^-8 of the element, so of max |cpu|) —
  // the CPU reference keeps its f32 result.
  void Compare(const char* op, Tensor gpu_out, const HostCopy& cpu_out, double tolerance) {
    if (gpu_out.dtype == DType::kBF16) tolerance += kUnitRoundoff;
    const HostCopy got = Pull(gpu_out);
    double max_diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < got.f.size(); ++i) {
      if (!std::isfinite(got.f[i])) {
        ADD_FAILURE() << where_ << ": " << op << " produced " << got.f[i] << " at " << i;
        return;
      }
      max_diff = std::max(max_diff, std::abs(static_cast<double>(got.f[i]) - cpu_out.f[i]));
      scale = std::max(scale, std::abs(static_cast<double>(cpu_out.f[i])));
    }
    const double relative = max_diff / std::max(scale, 1e-6);
    worst_[op] = std::max(worst_[op], relative);
    EXPECT_LE(relative, tolerance) << where_ << ": " << op << " differs from the CPU backend on the same inputs";
  }

  CudaBackend* gpu_;
  CpuBackend cpu_{0};
  std::vector<Buffer> owned_;
  std::string where_;
  std::map<std::string, double> worst_;
  std::map<std::string, int64_t> stats_;
};

class CudaOpTraceCheck : public testing::TestWithParam<std::string> {};

TEST_P(CudaOpTraceCheck, EveryOpOfTheForwardMatchesTheCpuOnItsOwnInputs) {
  auto gpu = CudaBackend::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  TracingBackend tracer(gpu->get());
  const std::string dir = GetParam();
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = DsaModel::Load(dir, *config, &tracer);
  ASSERT_TRUE(model.ok()) << model.status();
  auto cache = PagedKvCache::Create(&tracer, (*model)->CacheSpec(16), size_t{16} << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int32_t vocab = config->vocab_size;
  // Two sequences: A is prefilled in two chunks (the second chunk attends to the first), B in one; then
  // one batched decode step for both. C is one 100-token prefill: MoE batches above 64 tokens take
  // the cuBLAS expert path, smaller ones the matrix-vector kernel.
  std::vector<int32_t> a(80), b(23), c(100);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>((i * 131 + 7) % (vocab - 2));
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int32_t>((i * 71 + 3) % (vocab - 2));
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<int32_t>((i * 37 + 11) % (vocab - 2));
  ASSERT_TRUE((*cache)->Reserve(0, 81).ok());
  ASSERT_TRUE((*cache)->Reserve(1, 24).ok());
  ASSERT_TRUE((*cache)->Reserve(2, 100).ok());
  auto run = [&](const std::string& where, std::vector<std::pair<int32_t, std::pair<int32_t, int32_t>>> parts) {
    // parts: (sequence, [begin, end)) of the prompts (position == index; index 80/23 = the decode token).
    ForwardBatch batch;
    for (auto [seq, range] : parts) {
      const auto& ids = seq == 0 ? a : seq == 1 ? b : c;
      const int32_t index = static_cast<int32_t>(batch.sequences.size());
      batch.sequences.push_back(seq);
      for (int32_t p = range.first; p < range.second; ++p) {
        batch.token_ids.push_back(p < static_cast<int32_t>(ids.size()) ? ids[p] : 5);
        batch.positions.push_back(p);
        batch.token_seq.push_back(index);
      }
      batch.logit_rows.push_back(static_cast<int32_t>(batch.token_ids.size()) - 1);
    }
    tracer.set_where(dir + " " + where);
    auto result = (*model)->Forward(batch, **cache);
    ASSERT_TRUE(result.ok()) << result.status();
  };
  run("prefill A[0, 50)", {{0, {0, 50}}});
  run("prefill A[50, 80) + B[0, 23)", {{0, {50, 80}}, {1, {0, 23}}});
  run("decode A@80 + B@23", {{0, {80, 81}}, {1, {23, 24}}});
  run("prefill C[0, 100)", {{2, {0, 100}}});
  std::printf("  %s\n", dir.c_str());
  tracer.PrintSummary();
}

INSTANTIATE_TEST_SUITE_P(Models, CudaOpTraceCheck,
                         testing::Values(std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random",
                                         std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained",
                                         std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2",
                                         std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_pattern"));

}  // namespace
}  // namespace indexcache
