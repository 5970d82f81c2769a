// GPU check (not a ctest test: it needs a GPU; tools/gpu/check_cuda.sh runs it on the device): every
// op of the CUDA backend against an independent truth on the same inputs — the CPU backend given the
// same bf16-rounded weights, or a float64 reference — at tolerances derived from where bf16 rounding
// enters (unit roundoff u = 2⁻⁸ per rounded operand), and the top-k selections exactly, except where the
// float64 scores show a near-tie within that bound at the k-th boundary, which the check detects
// and counts.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/backend/backend.h"
#include "common/backend/cpu/cpu_backend.h"
#include "common/backend/cuda/cuda_backend.h"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/safetensors/dtype.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr double kUnitRoundoff = 1.0 / 256.0;  // bf16: 8 significant bits, round to nearest

float RoundBf16(float v) { return Bf16ToF32(F32ToBf16(v)); }

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<float> RoundedBf16(std::vector<float> v) {
  for (float& x : v) x = RoundBf16(x);
  return v;
}

// A tensor on one backend with the buffer that owns it.
struct Held {
  Buffer buffer;
  Tensor t;
};

Held Put(Backend& be, const void* host, DType dtype, int64_t rows, int64_t cols) {
  auto buffer = be.Allocate(static_cast<size_t>(rows * cols) * DTypeSize(dtype));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  Held h{std::move(*buffer), {}};
  h.t = h.buffer.View(dtype, rows, cols);
  if (host != nullptr) be.Upload(host, h.t);
  return h;
}

// An empty `v` leaves the tensor unwritten (an output).
Held PutF(Backend& be, const std::vector<float>& v, int64_t rows, int64_t cols, DType dtype = DType::kF32) {
  return Put(be, v.empty() ? nullptr : v.data(), dtype, rows, cols);
}

Held PutI(Backend& be, const std::vector<int32_t>& v, int64_t rows, int64_t cols) {
  return Put(be, v.empty() ? nullptr : v.data(), DType::kI32, rows, cols);
}

template <typename T>
std::vector<T> Get(Backend& be, Tensor t) {
  std::vector<T> v(static_cast<size_t>(t.numel()));
  const absl::Status s = be.Download(t, v.data());
  EXPECT_TRUE(s.ok()) << s;
  return v;
}

class CudaOpCheck : public testing::Test {
 protected:
  void SetUp() override {
    auto gpu = CudaBackend::Create();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
  }
  std::unique_ptr<CudaBackend> gpu_;
  CpuBackend cpu_{0};
};

// |gpu - cpu| <= bound elementwise, with a floor for values that cancel to ~0.
void ExpectWithin(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& bound,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double tol = bound[i] + 1e-5;
    worst = std::max(worst, err / tol);
    ASSERT_LE(err, tol) << what << " element " << i << ": " << got[i] << " vs " << want[i];
  }
  std::printf("  %-28s worst error / bound = %.3f\n", what, worst);
}

TEST_F(CudaOpCheck, LinearAndHeadwiseWithinBf16RoundingOfTheInput) {
  const int64_t m = 37, k = 256, n = 300, heads = 4;
  const std::vector<float> x = Random(m * k, 1), w = RoundedBf16(Random(n * k, 2, 0.0625f));
  std::vector<float> ax(x.size()), aw(w.size());
  std::transform(x.begin(), x.end(), ax.begin(), [](float v) { return std::abs(v); });
  std::transform(w.begin(), w.end(), aw.begin(), [](float v) { return std::abs(v); });
  // The bound: rounding x to bf16 moves each product by at most u·|x·w|.
  for (bool headwise : {false, true}) {
    const int64_t in = headwise ? k / heads : k, out_cols = headwise ? n / heads * heads : n;
    const int64_t w_rows = out_cols;
    Held gx = PutF(*gpu_, x, m, k), gw = PutF(*gpu_, w, w_rows, in, DType::kBF16), go = PutF(*gpu_, {}, m, out_cols);
    Held cx = PutF(cpu_, x, m, k), cw = PutF(cpu_, w, w_rows, in), co = PutF(cpu_, {}, m, out_cols);
    Held bx = PutF(cpu_, ax, m, k), bw = PutF(cpu_, aw, w_rows, in), bo = PutF(cpu_, {}, m, out_cols);
    if (headwise) {
      gpu_->HeadwiseLinear(gx.t, gw.t, heads, go.t);
      cpu_.HeadwiseLinear(cx.t, cw.t, heads, co.t);
      cpu_.HeadwiseLinear(bx.t, bw.t, heads, bo.t);
    } else {
      gpu_->Linear(gx.t, gw.t, go.t);
      cpu_.Linear(cx.t, cw.t, co.t);
      cpu_.Linear(bx.t, bw.t, bo.t);
    }
    std::vector<float> bound = Get<float>(cpu_, bo.t);
    for (float& b : bound) b = static_cast<float>(1.05 * kUnitRoundoff * b);
    ExpectWithin(Get<float>(*gpu_, go.t), Get<float>(cpu_, co.t), bound, headwise ? "headwise linear" : "linear");
  }
}

TEST_F(CudaOpCheck, RowOpsMatchTheCpuBackend) {
  const int64_t rows = 19, cols = 192;
  const std::vector<float> x = Random(rows * cols, 3), y = Random(rows * cols, 4);
  const std::vector<float> w = RoundedBf16(Random(cols, 5, 0.1f)), b = RoundedBf16(Random(cols, 6, 0.1f));
  std::vector<int32_t> pos(rows);
  for (int64_t r = 0; r < rows; ++r) pos[r] = static_cast<int32_t>(r * 977 % 70000);
  auto compare = [&](const char* what, auto&& op) {
    Held gx = PutF(*gpu_, x, rows, cols), cx = PutF(cpu_, x, rows, cols);
    op(static_cast<Backend&>(*gpu_), gx.t, DType::kBF16);
    op(static_cast<Backend&>(cpu_), cx.t, DType::kF32);
    const std::vector<float> want = Get<float>(cpu_, cx.t);
    std::vector<float> bound(want.size());
    // fp32 on both sides; transcendental functions differ by a few ulp (RoPE angles grow with position).
    for (size_t i = 0; i < want.size(); ++i) bound[i] = 2e-5f * (1.0f + std::abs(want[i]));
    ExpectWithin(Get<float>(*gpu_, gx.t), want, bound, what);
  };
  compare("rms norm (in place)", [&](Backend& be, Tensor t, DType wd) {
    Held hw = PutF(be, w, 1, cols, wd);
    be.RmsNorm(t, hw.t, 1e-5f, t);
    EXPECT_TRUE(be.Synchronize().ok());
  });
  compare("layer norm", [&](Backend& be, Tensor t, DType wd) {
    Held hw = PutF(be, w, 1, cols, wd), hb = PutF(be, b, 1, cols, wd);
    be.LayerNorm(t, hw.t, hb.t, 1e-6f, t);
    EXPECT_TRUE(be.Synchronize().ok());
  });
  compare("rope (3 heads, offset 8)", [&](Backend& be, Tensor t, DType) {
    Held hp = PutI(be, pos, rows, 1);
    be.RopeInterleaved(t, 3, 64, 8, 32, 10000.0f, hp.t);
    EXPECT_TRUE(be.Synchronize().ok());
  });
  compare("silu·mul + add", [&](Backend& be, Tensor t, DType) {
    Held hy = PutF(be, y, rows, cols), act = PutF(be, {}, rows, cols / 2);
    be.SiluMul(hy.t, act.t);
    be.Add(t.Cols(0, cols / 2), act.t);
    EXPECT_TRUE(be.Synchronize().ok());
  });
  compare("gather/scatter/embedding", [&](Backend& be, Tensor t, DType wd) {
    std::vector<int32_t> ids(rows);
    for (int64_t r = 0; r < rows; ++r) ids[r] = static_cast<int32_t>((r * 7 + 3) % rows);
    Held hid = PutI(be, ids, rows, 1), table = PutF(be, RoundedBf16(y), rows, cols, wd), tmp = PutF(be, {}, rows, cols);
    be.Embedding(table.t, hid.t, tmp.t);
    be.Add(t, tmp.t);
    be.GatherRows(t, hid.t, tmp.t);
    be.WriteCacheRows(tmp.t, hid.t, t);
    EXPECT_TRUE(be.Synchronize().ok());
  });
}

// --- bf16 activations: every float tensor of an op may be F32 or BF16, each independently ---------------

constexpr DType kFloatDtypes[] = {DType::kF32, DType::kBF16};

// What a tensor of `dtype` holds after Upload of v: v itself, or v rounded to nearest even.
std::vector<float> AsStored(const std::vector<float>& v, DType dtype) {
  return dtype == DType::kBF16 ? RoundedBf16(v) : v;
}

// f32 results of the row ops agree with the CPU backend to 2e-5 relative (transcendentals differ by a
// few ulp, as in RowOpsMatchTheCpuBackend); a bf16 output then adds its own rounding to nearest, at most
// half a unit in its last place: u = 2⁻⁸ of the value (1.01·u covers the f32 difference it rounds too).
std::vector<float> RowOpBound(const std::vector<float>& want, DType out) {
  std::vector<float> bound(want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double w = std::abs(want[i]);
    bound[i] = static_cast<float>(2e-5 * (1.0 + w) + (out == DType::kBF16 ? 1.01 * kUnitRoundoff * w : 0.0));
  }
  return bound;
}

// Like ExpectWithin, quietly: the worst error / bound, failing the test where one is exceeded.
double WorstOverBound(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& bound,
                      const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  double worst = 0.0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]), tol = bound[i] + 1e-5;
    if (!(err <= tol)) {
      ADD_FAILURE() << what << " element " << i << ": " << got[i] << " vs " << want[i] << " (bound " << tol << ")";
      return INFINITY;
    }
    worst = std::max(worst, err / tol);
  }
  return worst;
}

// Every row op with its input and output tensors in each dtype combination, on two views of the same
// rows: 192 columns from column 0 (16-byte vector access) and 190 columns from column 3 (element by
// element, and a short last run). The CPU backend gets the values the GPU tensors hold (bf16-rounded
// where bf16) as f32; in-place ops are judged on the tensor they update, every other column must come
// back as it went in.
TEST_F(CudaOpCheck, RowOpsTakeF32OrBf16ForEachTensor) {
  const int64_t rows = 13, width = 200;
  const std::vector<float> x = Random(rows * width, 51), y = Random(rows * width, 52);
  const std::vector<float> w = RoundedBf16(Random(width, 53, 0.1f)), b = RoundedBf16(Random(width, 54, 0.1f));
  const std::vector<float> table = RoundedBf16(Random(rows * width, 55));
  std::vector<int32_t> pos(rows), ids(rows);
  for (int64_t r = 0; r < rows; ++r) {
    pos[r] = static_cast<int32_t>(r * 977 % 70000);
    ids[r] = static_cast<int32_t>((r * 5 + 2) % rows);
  }
  // A tensor of `dtype` holding v: on the GPU stored as dtype, on the CPU as f32 of the stored values.
  auto input = [&](Backend& be, const std::vector<float>& v, int64_t r, int64_t c, DType dtype) {
    return &be == &cpu_ ? PutF(be, AsStored(v, dtype), r, c) : PutF(be, v, r, c, dtype);
  };
  struct View {
    int64_t begin, cols;
    // rope: heads, head stride, offset, dim — aligned quads in the first view, partial ones in the second
    int32_t heads, head_stride, rope_offset, rope_dim;
  };
  using Op = std::function<void(Backend&, Tensor in, DType in_dtype, Tensor out, DType out_dtype, const View&)>;
  const std::vector<std::pair<std::string, Op>> ops = {
      {"rms norm",
       [&](Backend& be, Tensor in, DType, Tensor out, DType, const View& v) {
         Held hw = input(be, std::vector<float>(w.begin(), w.begin() + v.cols), 1, v.cols, DType::kBF16);
         be.RmsNorm(in, hw.t, 1e-5f, out);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"rms norm in place",
       [&](Backend& be, Tensor in, DType, Tensor, DType, const View& v) {
         Held hw = input(be, std::vector<float>(w.begin(), w.begin() + v.cols), 1, v.cols, DType::kBF16);
         be.RmsNorm(in, hw.t, 1e-5f, in);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"layer norm",
       [&](Backend& be, Tensor in, DType, Tensor out, DType, const View& v) {
         Held hw = input(be, std::vector<float>(w.begin(), w.begin() + v.cols), 1, v.cols, DType::kBF16);
         Held hb = input(be, std::vector<float>(b.begin(), b.begin() + v.cols), 1, v.cols, DType::kF32);
         be.LayerNorm(in, hw.t, hb.t, 1e-6f, out);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"rope",
       [&](Backend& be, Tensor in, DType, Tensor, DType, const View& v) {
         Held hp = PutI(be, pos, rows, 1);
         be.RopeInterleaved(in, v.heads, v.head_stride, v.rope_offset, v.rope_dim, 10000.0f, hp.t);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"silu·mul",
       [&](Backend& be, Tensor in, DType, Tensor out, DType, const View& v) {
         be.SiluMul(in, out.Cols(0, v.cols / 2));
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"add (out += in)",
       [&](Backend& be, Tensor in, DType, Tensor out, DType, const View&) {
         be.Add(out, in);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
      {"embedding",
       [&](Backend& be, Tensor, DType, Tensor out, DType, const View& v) {
         Held ht = input(be, table, rows, width, DType::kBF16), hi = PutI(be, ids, rows, 1);
         be.Embedding(ht.t.Cols(v.begin, v.cols), hi.t, out);
         EXPECT_TRUE(be.Synchronize().ok());
       }},
  };
  for (const auto& [name, op] : ops) {
    double worst = 0.0;
    for (const View& v : {View{0, 192, 3, 64, 8, 32}, View{3, 190, 2, 90, 5, 12}}) {
      for (DType in_dtype : kFloatDtypes) {
        for (DType out_dtype : kFloatDtypes) {
          const std::string what = name + " (" + DTypeName(in_dtype) + " → " + DTypeName(out_dtype) + ", columns " +
                                   std::to_string(v.begin) + "..)";
          Held gi = input(*gpu_, x, rows, width, in_dtype), go = input(*gpu_, y, rows, width, out_dtype);
          Held ci = input(cpu_, x, rows, width, in_dtype), co = input(cpu_, y, rows, width, out_dtype);
          op(*gpu_, gi.t.Cols(v.begin, v.cols), in_dtype, go.t.Cols(v.begin, v.cols), out_dtype, v);
          op(cpu_, ci.t.Cols(v.begin, v.cols), in_dtype, co.t.Cols(v.begin, v.cols), out_dtype, v);
          for (const auto& [g, c, dtype] : {std::tuple{&gi, &ci, in_dtype}, std::tuple{&go, &co, out_dtype}}) {
            const std::vector<float> want = Get<float>(cpu_, c->t);
            worst = std::max(worst, WorstOverBound(Get<float>(*gpu_, g->t), want, RowOpBound(want, dtype), what));
          }
        }
      }
    }
    std::printf("  %-28s f32/bf16 in × out, 2 views: worst error / bound = %.3f\n", name.c_str(), worst);
  }
}

// Row copies between dtypes are exact: f32 → bf16 is the host's round to nearest even (ties included),
// bf16 → f32 widens; equal dtypes copy. A negative slot writes nothing, rows not named keep the fill.
TEST_F(CudaOpCheck, GatherAndCacheWritesConvertExactly) {
  const int64_t rows = 11, width = 72, pool_rows = 2 * rows;
  std::vector<float> src = Random(rows * width, 61, 3.0f);
  // Exactly halfway between two bf16 values: 1 + 2⁻⁸ rounds down to 1 (even), 1 + 3·2⁻⁸ up to 1 + 2⁻⁶.
  src[0] = 1.0f + 1.0f / 256.0f;
  src[1] = 1.0f + 3.0f / 256.0f;
  src[2] = -(1.0f + 3.0f / 256.0f);
  std::vector<int32_t> ids(rows), slots(rows);
  for (int64_t r = 0; r < rows; ++r) {
    ids[r] = static_cast<int32_t>((r * 4 + 1) % rows);
    slots[r] = r % 4 == 3 ? -1 : static_cast<int32_t>((r * 7 + 5) % pool_rows);
  }
  constexpr float kFill = 7.0f;  // exact in bf16
  for (const auto& [begin, cols] : {std::pair<int64_t, int64_t>{0, 72}, std::pair<int64_t, int64_t>{1, 69}}) {
    for (DType from : kFloatDtypes) {
      for (DType to : kFloatDtypes) {
        SCOPED_TRACE(testing::Message() << DTypeName(from) << " → " << DTypeName(to) << ", columns " << begin << "..");
        const std::vector<float> stored = AsStored(src, from);
        Held hs = PutF(*gpu_, src, rows, width, from), hi = PutI(*gpu_, ids, rows, 1), hm = PutI(*gpu_, slots, rows, 1);
        Held gathered = PutF(*gpu_, {}, rows, width, to), pool = PutF(*gpu_, {}, pool_rows, width, to);
        gpu_->Fill(gathered.t, kFill);
        gpu_->Fill(pool.t, kFill);
        gpu_->GatherRows(hs.t.Cols(begin, cols), hi.t, gathered.t.Cols(begin, cols));
        gpu_->WriteCacheRows(hs.t.Cols(begin, cols), hm.t, pool.t.Cols(begin, cols));
        ASSERT_TRUE(gpu_->Synchronize().ok()) << gpu_->Synchronize();
        std::vector<float> want_gathered(rows * width, kFill), want_pool(pool_rows * width, kFill);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = begin; c < begin + cols; ++c) {
            const float g = stored[ids[r] * width + c], s = stored[r * width + c];
            want_gathered[r * width + c] = to == DType::kBF16 ? RoundBf16(g) : g;
            if (slots[r] >= 0) want_pool[slots[r] * width + c] = to == DType::kBF16 ? RoundBf16(s) : s;
          }
        }
        EXPECT_EQ(Get<float>(*gpu_, gathered.t), want_gathered) << "gather rows";
        EXPECT_EQ(Get<float>(*gpu_, pool.t), want_pool) << "write cache rows";
      }
    }
  }
  // i32 rows copy as they are.
  std::vector<int32_t> table(rows * 3);
  std::iota(table.begin(), table.end(), -5);
  Held ht = PutI(*gpu_, table, rows, 3), hi = PutI(*gpu_, ids, rows, 1), out = PutI(*gpu_, {}, rows, 3);
  gpu_->GatherRows(ht.t, hi.t, out.t);
  std::vector<int32_t> want(rows * 3);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(&table[ids[r] * 3], 3, &want[r * 3]);
  EXPECT_EQ(Get<int32_t>(*gpu_, out.t), want);
  std::printf("  gather / cache writes f32 ↔ bf16 (aligned and not), i32: exact\n");
}

// ArgMax over bf16 logits picks what the CPU picks over the same (rounded) values, ties included —
// rounding makes more of them.
TEST_F(CudaOpCheck, ArgMaxOverBf16EqualsTheCpuBackend) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (const int64_t vocab : {int64_t{2048}, int64_t{151552}}) {
    for (const int64_t pad : {int64_t{0}, int64_t{7}}) {  // aligned rows, then a stride that is not
      const int64_t rows = 6, stride = vocab + pad;
      std::vector<float> v = Random(static_cast<size_t>(rows * stride), 78, 4.0f);
      v[stride * 1 + 10] = v[stride * 1 + vocab - 3] = 100.0f;
      v[stride * 2 + 0] = nan;
      v[stride * 3 + 17] = v[stride * 3 + 900] = inf;
      std::fill(v.begin() + stride * 4, v.begin() + stride * 4 + vocab, -inf);
      std::fill(v.begin() + stride * 5, v.begin() + stride * 5 + vocab, nan);
      Held g = PutF(*gpu_, v, rows, stride, DType::kBF16), go = PutI(*gpu_, {}, rows, 1);
      Held c = PutF(cpu_, RoundedBf16(v), rows, stride), co = PutI(cpu_, {}, rows, 1);
      gpu_->ArgMax(g.t.Cols(0, vocab), go.t);
      cpu_.ArgMax(c.t.Cols(0, vocab), co.t);
      EXPECT_EQ(Get<int32_t>(*gpu_, go.t), Get<int32_t>(cpu_, co.t)) << "vocab " << vocab << " stride " << stride;
    }
  }
}

// bf16 x straight into cuBLAS: a column slice (row stride wider than the row, like q_nope inside q)
// for Linear and per head; out written as f32 or bf16. The bound: x rounded to bf16 by the f32 path's
// cast moves each product by at most u·|x·w| (1.05·u as in LinearAndHeadwise…); bf16 x is what the
// CPU gets, leaving f32 summation (1e-4 of Σ|x·w| covers k = 256 terms); a bf16 out adds u of the value.
TEST_F(CudaOpCheck, LinearAndHeadwiseTakeBf16StridedXAndWriteEitherDtype) {
  const int64_t m = 37, k = 256, n = 300, heads = 4, width = k + 24, begin = 8;
  const std::vector<float> x = Random(m * width, 71), w = RoundedBf16(Random(n * k, 72, 0.0625f));
  for (bool headwise : {false, true}) {
    const int64_t in = headwise ? k / heads : k, out_cols = headwise ? n / heads * heads : n;
    for (DType xd : kFloatDtypes) {
      for (DType od : kFloatDtypes) {
        const std::vector<float> xs = AsStored(x, xd);
        std::vector<float> ax(xs.size()), aw(w.begin(), w.begin() + out_cols * in);
        std::transform(xs.begin(), xs.end(), ax.begin(), [](float v) { return std::abs(v); });
        std::transform(aw.begin(), aw.end(), aw.begin(), [](float v) { return std::abs(v); });
        Held gx = PutF(*gpu_, x, m, width, xd), gw = PutF(*gpu_, w, out_cols, in, DType::kBF16);
        Held go = PutF(*gpu_, {}, m, out_cols, od);
        Held cx = PutF(cpu_, xs, m, width), cw = PutF(cpu_, w, out_cols, in), co = PutF(cpu_, {}, m, out_cols);
        Held bx = PutF(cpu_, ax, m, width), bw = PutF(cpu_, aw, out_cols, in), bo = PutF(cpu_, {}, m, out_cols);
        if (headwise) {
          gpu_->HeadwiseLinear(gx.t.Cols(begin, k), gw.t, heads, go.t);
          cpu_.HeadwiseLinear(cx.t.Cols(begin, k), cw.t, heads, co.t);
          cpu_.HeadwiseLinear(bx.t.Cols(begin, k), bw.t, heads, bo.t);
        } else {
          gpu_->Linear(gx.t.Cols(begin, k), gw.t, go.t);
          cpu_.Linear(cx.t.Cols(begin, k), cw.t, co.t);
          cpu_.Linear(bx.t.Cols(begin, k), bw.t, bo.t);
        }
        const std::vector<float> want = Get<float>(cpu_, co.t), sum_abs = Get<float>(cpu_, bo.t);
        std::vector<float> bound(want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          bound[i] = static_cast<float>((xd == DType::kF32 ? 1.05 * kUnitRoundoff : 1e-4) * sum_abs[i] +
                                        (od == DType::kBF16 ? 1.01 * kUnitRoundoff * std::abs(want[i]) : 0.0));
        }
        const std::string what = std::string(headwise ? "headwise " : "") + "linear x " + DTypeName(xd) + " (strided) → " +
                                 DTypeName(od);
        ExpectWithin(Get<float>(*gpu_, go.t), want, bound, what.c_str());
      }
    }
  }
}

// MoE with bf16 tokens and/or a bf16 output (out += experts' sum: the output starts from other values).
// 5 tokens run the matrix-vector kernel, 100 the per-expert cuBLAS path. x is bf16-exact, so both x
// dtypes feed the experts the same values; the routing must pick what the CPU picks.
TEST_F(CudaOpCheck, MoeTakesBf16TokensAndWritesEitherDtype) {
  const int64_t hidden = 256, inter = 128;
  const int32_t experts = 16;
  const MoeRouting routing{experts, 4, 4, 2, true, 2.5f};
  const std::vector<float> gate = RoundedBf16(Random(experts * hidden, 82, 0.0625f));
  const std::vector<float> bias = RoundedBf16(Random(experts, 83, 0.05f));
  const std::vector<float> gu = RoundedBf16(Random(experts * 2 * inter * hidden, 84, 0.0625f));
  const std::vector<float> down = RoundedBf16(Random(experts * hidden * inter, 85, 0.088f));
  for (const int64_t n : {5, 100}) {
    const std::vector<float> x = RoundedBf16(Random(n * hidden, 81)), base = Random(n * hidden, 86);
    for (const auto& [xd, od] : {std::pair{DType::kBF16, DType::kBF16}, std::pair{DType::kF32, DType::kBF16},
                                 std::pair{DType::kBF16, DType::kF32}}) {
      SCOPED_TRACE(testing::Message() << n << " tokens, x " << DTypeName(xd) << ", out " << DTypeName(od));
      // CPU: f32 everywhere, out starting from the values the GPU's out holds.
      Held cx = PutF(cpu_, x, n, hidden), cg = PutF(cpu_, gate, experts, hidden), cb = PutF(cpu_, bias, 1, experts);
      Held cgu = PutF(cpu_, gu, experts * 2 * inter, hidden), cd = PutF(cpu_, down, experts * hidden, inter);
      Held cid = PutI(cpu_, {}, n, routing.top_k), cw = PutF(cpu_, {}, n, routing.top_k);
      Held co = PutF(cpu_, AsStored(base, od), n, hidden);
      cpu_.MoeRoute(cx.t, cg.t, cb.t, routing, cid.t, cw.t);
      cpu_.MoeExperts(cx.t, cgu.t, cd.t, experts, cid.t, cw.t, co.t, 0);
      const std::vector<int32_t> cpu_ids = Get<int32_t>(cpu_, cid.t);
      const std::vector<float> cpu_w = Get<float>(cpu_, cw.t), want = Get<float>(cpu_, co.t);
      // GPU: routed on its own (compared), experts run on the CPU's routing.
      Held gx = PutF(*gpu_, x, n, hidden, xd), gg = PutF(*gpu_, gate, experts, hidden, DType::kBF16);
      Held gb = PutF(*gpu_, bias, 1, experts, DType::kBF16);
      Held ggu = PutF(*gpu_, gu, experts * 2 * inter, hidden, DType::kBF16);
      Held gd = PutF(*gpu_, down, experts * hidden, inter, DType::kBF16);
      Held gid = PutI(*gpu_, {}, n, routing.top_k), gw = PutF(*gpu_, {}, n, routing.top_k);
      Held go = PutF(*gpu_, base, n, hidden, od);
      gpu_->MoeRoute(gx.t, gg.t, gb.t, routing, gid.t, gw.t);
      EXPECT_EQ(Get<int32_t>(*gpu_, gid.t), cpu_ids) << "router picks differ";
      ExpectWithin(Get<float>(*gpu_, gw.t), cpu_w, std::vector<float>(cpu_w.size(), 1e-5f), "moe route weights");
      gpu_->Upload(cpu_ids.data(), gid.t);
      gpu_->Upload(cpu_w.data(), gw.t);
      gpu_->MoeExperts(gx.t, ggu.t, gd.t, experts, gid.t, gw.t, go.t, 0);
      // The experts' part as in MoeRoutingAndExpertsMatchTheCpuBackend (4u of the row's largest), then a
      // bf16 out rounds the sum: u of it.
      const std::vector<float> stored_base = AsStored(base, od);
      std::vector<float> bound(want.size());
      for (int64_t r = 0; r < n; ++r) {
        float row_max = 0.0f;
        for (int64_t c = 0; c < hidden; ++c) {
          row_max = std::max(row_max, std::abs(want[r * hidden + c] - stored_base[r * hidden + c]));
        }
        for (int64_t c = 0; c < hidden; ++c) {
          const size_t i = static_cast<size_t>(r * hidden + c);
          bound[i] = static_cast<float>(4 * kUnitRoundoff * row_max +
                                        (od == DType::kBF16 ? 1.01 * kUnitRoundoff * std::abs(want[i]) : 0.0));
        }
      }
      ExpectWithin(Get<float>(*gpu_, go.t), want, bound,
                   (std::string("moe experts x ") + DTypeName(xd) + " out " + DTypeName(od)).c_str());
    }
  }
}

// Expert parallelism: each of 4 slices of 4 experts (first_expert 0, 4, 8, 12) adds only its own
// experts' share, against the CPU backend running the same slice; entries routed to other slices add
// nothing. 5 tokens take the matrix-vector kernel, 100 the cuBLAS path.
TEST_F(CudaOpCheck, MoeExpertsOfOneSliceAddOnlyTheirExpertsShare) {
  const int64_t hidden = 256, inter = 128;
  const int32_t experts = 16, slice = 4;
  const std::vector<float> gu = RoundedBf16(Random(experts * 2 * inter * hidden, 94, 0.0625f));
  const std::vector<float> down = RoundedBf16(Random(experts * hidden * inter, 95, 0.088f));
  for (const int64_t n : {5, 100}) {
    const std::vector<float> x = RoundedBf16(Random(n * hidden, 91));
    std::vector<int32_t> ids(n * 4);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + i / 4) % experts);
    const std::vector<float> weights = Random(n * 4, 92, 0.5f);
    for (int32_t first = 0; first < experts; first += slice) {
      SCOPED_TRACE(testing::Message() << n << " tokens, experts [" << first << ", " << first + slice << ")");
      const std::vector<float> slice_gu(gu.begin() + first * 2 * inter * hidden,
                                        gu.begin() + (first + slice) * 2 * inter * hidden);
      const std::vector<float> slice_down(down.begin() + first * hidden * inter,
                                          down.begin() + (first + slice) * hidden * inter);
      Held cx = PutF(cpu_, x, n, hidden), cgu = PutF(cpu_, slice_gu, slice * 2 * inter, hidden);
      Held cd = PutF(cpu_, slice_down, slice * hidden, inter), cid = PutI(cpu_, ids, n, 4);
      Held cw = PutF(cpu_, weights, n, 4), co = PutF(cpu_, std::vector<float>(n * hidden, 0.0f), n, hidden);
      cpu_.MoeExperts(cx.t, cgu.t, cd.t, slice, cid.t, cw.t, co.t, first);
      const std::vector<float> want = Get<float>(cpu_, co.t);
      Held gx = PutF(*gpu_, x, n, hidden, DType::kBF16), ggu = PutF(*gpu_, slice_gu, slice * 2 * inter, hidden, DType::kBF16);
      Held gd = PutF(*gpu_, slice_down, slice * hidden, inter, DType::kBF16), gid = PutI(*gpu_, ids, n, 4);
      Held gw = PutF(*gpu_, weights, n, 4), go = PutF(*gpu_, std::vector<float>(n * hidden, 0.0f), n, hidden);
      gpu_->MoeExperts(gx.t, ggu.t, gd.t, slice, gid.t, gw.t, go.t, first);
      // As in MoeTakesBf16TokensAndWritesEitherDtype: 4u of the row's largest (f32 out).
      std::vector<float> bound(want.size());
      for (int64_t r = 0; r < n; ++r) {
        float row_max = 0.0f;
        for (int64_t c = 0; c < hidden; ++c) row_max = std::max(row_max, std::abs(want[r * hidden + c]));
        for (int64_t c = 0; c < hidden; ++c) bound[r * hidden + c] = static_cast<float>(4 * kUnitRoundoff * row_max);
      }
      ExpectWithin(Get<float>(*gpu_, go.t), want, bound, "moe experts of one slice");
    }
  }
}

// Dtypes the ops cannot take are errors (each on a fresh backend: the first error is sticky).
TEST_F(CudaOpCheck, MismatchedDtypesAreErrors) {
  const std::vector<std::pair<const char*, std::function<void(CudaBackend&)>>> cases = {
      {"gather i32 into f32",
       [](CudaBackend& be) {
         Held src = PutI(be, std::vector<int32_t>(8, 1), 2, 4), ids = PutI(be, {0, 1}, 2, 1), dst = PutF(be, {}, 2, 4);
         be.GatherRows(src.t, ids.t, dst.t);
       }},
      {"cache write of f32 into i32",
       [](CudaBackend& be) {
         Held src = PutF(be, Random(8, 1), 2, 4), slots = PutI(be, {0, 1}, 2, 1), pool = PutI(be, {}, 2, 4);
         be.WriteCacheRows(src.t, slots.t, pool.t);
       }},
      {"rms norm of one memory as f32 in and bf16 out",
       [](CudaBackend& be) {
         Held x = PutF(be, Random(32, 2), 2, 16), w = PutF(be, Random(16, 3), 1, 16, DType::kBF16);
         Tensor as_bf16 = x.t;
         as_bf16.dtype = DType::kBF16;
         be.RmsNorm(x.t, w.t, 1e-5f, as_bf16);
       }},
      {"linear with f32 weights and bf16 x",
       [](CudaBackend& be) {
         Held x = PutF(be, Random(32, 4), 2, 16, DType::kBF16), w = PutF(be, Random(48, 5), 3, 16);
         Held out = PutF(be, {}, 2, 3);
         be.Linear(x.t, w.t, out.t);
       }},
      {"add of i32",
       [](CudaBackend& be) {
         Held x = PutF(be, Random(8, 6), 2, 4), y = PutI(be, std::vector<int32_t>(8, 1), 2, 4);
         be.Add(x.t, y.t);
       }},
      {"moe experts on i32 tokens",
       [](CudaBackend& be) {
         Held x = PutI(be, std::vector<int32_t>(32, 1), 2, 16), gu = PutF(be, Random(2 * 32 * 16, 7), 64, 16, DType::kBF16);
         Held down = PutF(be, Random(2 * 16 * 16, 8), 32, 16, DType::kBF16), ids = PutI(be, {0, 1}, 2, 1);
         Held wts = PutF(be, {1.0f, 1.0f}, 2, 1), out = PutF(be, {}, 2, 16);
         be.MoeExperts(x.t, gu.t, down.t, 2, ids.t, wts.t, out.t, 0);
       }},
  };
  for (const auto& [what, op] : cases) {
    auto be = CudaBackend::Create();
    ASSERT_TRUE(be.ok()) << be.status();
    op(**be);
    const absl::Status s = (*be)->Synchronize();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
  }
}

// The exact top-k: best first, ties to the lower column.
std::vector<int32_t> ExactTopK(const float* scores, int32_t length, int32_t k_cols) {
  std::vector<int32_t> order(length);
  std::iota(order.begin(), order.end(), 0);
  const int32_t k = std::min(k_cols, length);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  order.resize(k);
  order.resize(k_cols, -1);
  return order;
}

TEST_F(CudaOpCheck, RadixTopKIsExactIncludingTiesAndLongRows) {
  enum class Scores { kNormal, kLevels, kDescending, kSignedZeros };
  struct Case {
    const char* name;
    int32_t width, k;
    Scores scores;
    int32_t levels;  // kLevels: scores drawn from that many values (many ties)
    int32_t rows;
    int32_t step;  // row r sees columns 0 .. width - 1 - r·step
  };
  // The kernel keeps k + 8192 keys in shared memory: rows up to that length are read into it whole,
  // longer ones stream through a floor in rounds of 8192 columns (a round that overflows the buffer
  // is read again after a cut). The cases cover both sides of that length, rounds that overflow
  // (descending scores; all equal), unaligned rows, k at its 4096 limit and k > length.
  const Case cases[] = {
      {"random 4096, k 64", 4096, 64, Scores::kNormal, 0, 8, 3},
      {"k >= length", 50, 64, Scores::kNormal, 0, 3, 3},
      {"16 levels, k 2048", 20000, 2048, Scores::kLevels, 16, 4, 3},
      {"all equal 131072", 131072, 2048, Scores::kLevels, 1, 2, 3},
      {"random 131072, k 2048", 131072, 2048, Scores::kNormal, 0, 4, 3},
      {"3 levels, k 7", 1000, 7, Scores::kLevels, 3, 5, 3},
      {"8192 and shorter, k 2048", 8192, 2048, Scores::kNormal, 0, 16, 511},
      {"around the buffer, k 2048", 10250, 2048, Scores::kNormal, 0, 6, 3},
      {"descending 65536, k 2048", 65536, 2048, Scores::kDescending, 0, 2, 3},
      {"odd width 12001, k 2048", 12001, 2048, Scores::kNormal, 0, 4, 1},
      {"k 4096 of 131072", 131072, 4096, Scores::kNormal, 0, 2, 5},
      {"k 1001 > most lengths", 1200, 1001, Scores::kNormal, 0, 4, 233},
      {"+0 ties -0, k 300", 5000, 300, Scores::kSignedZeros, 0, 3, 7},
  };
  for (const Case& c : cases) {
    std::vector<float> logits = Random(static_cast<size_t>(c.rows) * c.width, 11 + c.width + c.k);
    for (size_t i = 0; i < logits.size(); ++i) {
      float& v = logits[i];
      const auto column = static_cast<float>(i % c.width);
      if (c.scores == Scores::kLevels) v = std::floor((v + 3.0f) / 6.0f * c.levels) - 1.0f;
      if (c.scores == Scores::kDescending) v = -column;
      if (c.scores == Scores::kSignedZeros) v = v < -0.5f ? -1.0f : (v < 0.4f ? -0.0f : 0.0f);
    }
    std::vector<int32_t> pos(c.rows);
    for (int32_t r = 0; r < c.rows; ++r) pos[r] = c.width - 1 - r * c.step;
    // Poisoned output: an entry the kernel leaves unwritten cannot pass for a column or -1.
    const std::vector<int32_t> poison(static_cast<size_t>(c.rows) * c.k, -7);
    Held gl = PutF(*gpu_, logits, c.rows, c.width), gp = PutI(*gpu_, pos, c.rows, 1), go = PutI(*gpu_, poison, c.rows, c.k);
    const std::string error = cuda::RowTopK(gl.t, gp.t.ptr<int32_t>(), go.t, gpu_->stream());
    ASSERT_TRUE(error.empty()) << error;
    const std::vector<int32_t> got = Get<int32_t>(*gpu_, go.t);
    for (int32_t r = 0; r < c.rows; ++r) {
      const std::vector<int32_t> want = ExactTopK(&logits[static_cast<size_t>(r) * c.width], pos[r] + 1, c.k);
      ASSERT_EQ(std::vector<int32_t>(got.begin() + r * c.k, got.begin() + (r + 1) * c.k), want) << c.name << " row " << r;
    }
    std::printf("  top-k %-28s exact\n", c.name);
  }
}

// token_pos is trusted to lie inside the row; one beyond it reads only the row's width, a negative
// one selects nothing (all -1).
TEST_F(CudaOpCheck, RadixTopKCutsTokenPositionsToTheRow) {
  const int32_t width = 30000, k = 100;  // long enough to stream through the floor
  const std::vector<float> logits = Random(size_t{4} * width, 77);
  const std::vector<int32_t> pos = {width + 500, -1, 0, width - 1};
  const std::vector<int32_t> poison(size_t{4} * k, -7);
  Held gl = PutF(*gpu_, logits, 4, width), gp = PutI(*gpu_, pos, 4, 1), go = PutI(*gpu_, poison, 4, k);
  const std::string error = cuda::RowTopK(gl.t, gp.t.ptr<int32_t>(), go.t, gpu_->stream());
  ASSERT_TRUE(error.empty()) << error;
  const std::vector<int32_t> got = Get<int32_t>(*gpu_, go.t);
  for (int32_t r = 0; r < 4; ++r) {
    const int32_t length = std::clamp(pos[r] + 1, 0, width);
    const std::vector<int32_t> want = ExactTopK(&logits[static_cast<size_t>(r) * width], length, k);
    ASSERT_EQ(std::vector<int32_t>(got.begin() + r * k, got.begin() + (r + 1) * k), want) << "row " << r;
  }
}

// A paged batch over several sequences: a prefill chunk of sequence 0 then one decode token of each
// other sequence; block tables are shuffled so a sequence's blocks are scattered through the pool.
struct PagedBatch {
  std::vector<int32_t> seq, pos, tables;
  int32_t block_size = 16, max_blocks = 0, slots = 0, max_context = 0;
  int32_t SlotOf(int32_t s, int32_t p) const { return tables[s * max_blocks + p / block_size] * block_size + p % block_size; }
};

PagedBatch MakeBatch(const std::vector<int32_t>& lengths, int32_t chunk, uint32_t seed) {
  PagedBatch b;
  const int32_t longest = *std::max_element(lengths.begin(), lengths.end());
  b.max_blocks = (longest + b.block_size - 1) / b.block_size;
  std::vector<int32_t> blocks(lengths.size() * b.max_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(seed));
  b.tables = blocks;
  b.slots = static_cast<int32_t>(blocks.size()) * b.block_size;
  for (int32_t p = lengths[0] - chunk; p < lengths[0]; ++p) {
    b.seq.push_back(0);
    b.pos.push_back(p);
  }
  for (size_t s = 1; s < lengths.size(); ++s) {
    b.seq.push_back(static_cast<int32_t>(s));
    b.pos.push_back(lengths[s] - 1);
  }
  b.max_context = longest;
  return b;
}

struct DeviceLayout {
  Held seq, pos, tables;
  BatchLayout layout;
};

DeviceLayout Upload(Backend& be, const PagedBatch& b) {
  DeviceLayout d;
  const int64_t n = static_cast<int64_t>(b.seq.size());
  d.seq = PutI(be, b.seq, n, 1);
  d.pos = PutI(be, b.pos, n, 1);
  d.tables = PutI(be, b.tables, static_cast<int64_t>(b.tables.size()) / b.max_blocks, b.max_blocks);
  d.layout = BatchLayout{d.seq.t, d.pos.t, Tensor{}, d.tables.t, b.block_size, b.max_context};
  return d;
}

// The float64 indexer score of query row r against `key`, and its bf16 error bound: q and k are
// rounded, so each q·k moves by at most 2.01·u·Σ|q_d k_d|, and the head-weighted ReLU sum by
// Σ_h |w_h|·scale·that.
struct ScoreAndBound {
  double score, bound;
};
ScoreAndBound IndexerScore64(const std::vector<float>& q, const std::vector<float>& w, const float* key, int64_t r,
                             int32_t heads, int32_t dim, double scale) {
  ScoreAndBound out{0.0, 0.0};
  for (int32_t h = 0; h < heads; ++h) {
    const float* qh = &q[(r * heads + h) * dim];
    double dot = 0.0, abs_dot = 0.0;
    for (int32_t d = 0; d < dim; ++d) {
      dot += static_cast<double>(qh[d]) * key[d];
      abs_dot += std::abs(static_cast<double>(qh[d]) * key[d]);
    }
    out.score += w[r * heads + h] * std::max(dot * scale, 0.0);
    out.bound += std::abs(w[r * heads + h]) * scale * 2.01 * kUnitRoundoff * abs_dot;
  }
  return out;
}

// 5 and 45 tokens run the decode-sized matrix-vector kernel, 100 and 600 the per-expert cuBLAS path.
TEST_F(CudaOpCheck, MoeRoutingAndExpertsMatchTheCpuBackend) {
  for (const int64_t n : {5, 45, 100, 600}) {
    SCOPED_TRACE(testing::Message() << n << " tokens");
    const int64_t hidden = 256, inter = 128;
    const int32_t experts = 16;
    MoeRouting routing{experts, 4, 4, 2, true, 2.5f};
    const std::vector<float> x = RoundedBf16(Random(n * hidden, 41));
    const std::vector<float> gate = RoundedBf16(Random(experts * hidden, 42, 0.0625f));
    const std::vector<float> bias = RoundedBf16(Random(experts, 43, 0.05f));
    const std::vector<float> gu = RoundedBf16(Random(experts * 2 * inter * hidden, 44, 0.0625f));
    const std::vector<float> down = RoundedBf16(Random(experts * hidden * inter, 45, 0.088f));
    auto run = [&](Backend& be, DType wd, std::vector<int32_t>* ids, std::vector<float>* wts, std::vector<float>* out,
                   const std::vector<int32_t>* forced_ids, const std::vector<float>* forced_wts) {
      Held hx = PutF(be, x, n, hidden), hg = PutF(be, gate, experts, hidden, wd), hb = PutF(be, bias, 1, experts, wd);
      Held hgu = PutF(be, gu, experts * 2 * inter, hidden, wd), hd = PutF(be, down, experts * hidden, inter, wd);
      Held hid = PutI(be, {}, n, routing.top_k), hw = PutF(be, {}, n, routing.top_k), ho = PutF(be, {}, n, hidden);
      be.MoeRoute(hx.t, hg.t, hb.t, routing, hid.t, hw.t);
      *ids = Get<int32_t>(be, hid.t);
      *wts = Get<float>(be, hw.t);
      if (forced_ids != nullptr) {
        be.Upload(forced_ids->data(), hid.t);
        be.Upload(forced_wts->data(), hw.t);
      }
      be.Fill(ho.t, 0.0f);
      be.MoeExperts(hx.t, hgu.t, hd.t, experts, hid.t, hw.t, ho.t, 0);
      *out = Get<float>(be, ho.t);
    };
    std::vector<int32_t> cpu_ids, gpu_ids;
    std::vector<float> cpu_w, gpu_w, cpu_out, gpu_out;
    run(cpu_, DType::kF32, &cpu_ids, &cpu_w, &cpu_out, nullptr, nullptr);
    // The experts are checked on the CPU's routing (x is bf16-exact, so the router logits agree to
    // fp32 rounding and the picks should too).
    run(*gpu_, DType::kBF16, &gpu_ids, &gpu_w, &gpu_out, &cpu_ids, &cpu_w);
    int64_t differing = 0;
    for (size_t i = 0; i < cpu_ids.size(); ++i) differing += cpu_ids[i] != gpu_ids[i];
    EXPECT_EQ(differing, 0) << "router picks differ";
    std::vector<float> bound(cpu_w.size(), 1e-5f);
    ExpectWithin(gpu_w, cpu_w, bound, "moe route weights");
    // Experts: the activation between the two GEMMs is rounded to bf16 (u relative), the rest is exact
    // products of bf16 values with fp32 sums: bound 2u of the largest contribution per row.
    bound.assign(cpu_out.size(), 0.0f);
    for (int64_t r = 0; r < n; ++r) {
      float row_max = 0.0f;
      for (int64_t c = 0; c < hidden; ++c) row_max = std::max(row_max, std::abs(cpu_out[r * hidden + c]));
      for (int64_t c = 0; c < hidden; ++c) bound[r * hidden + c] = static_cast<float>(4 * kUnitRoundoff * row_max);
    }
    ExpectWithin(gpu_out, cpu_out, bound, "moe experts");
  }
}

// Greedy decode takes its token from ArgMax on the device: it must pick exactly what the CPU backend
// (and so the host sampler, tests/engine_test.cc) picks, at the bundled and the paper's vocabulary,
// on ties, NaN, ±inf and rows without a usable value, from a strided view.
TEST_F(CudaOpCheck, ArgMaxEqualsTheCpuBackend) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (const int64_t vocab : {int64_t{2048}, int64_t{151552}}) {
    const int64_t rows = 9, stride = vocab + 7;
    std::vector<float> v = Random(static_cast<size_t>(rows * stride), 77, 4.0f);
    float* row = v.data();
    row[stride * 1 + 10] = row[stride * 1 + vocab - 3] = 100.0f;  // tie: lower column
    row[stride * 2 + 0] = nan;
    row[stride * 2 + vocab / 2] = 200.0f;
    row[stride * 3 + 17] = row[stride * 3 + 900] = inf;
    std::fill(row + stride * 4, row + stride * 4 + vocab, -inf);
    row[stride * 4 + vocab - 1] = -1e30f;
    std::fill(row + stride * 5, row + stride * 5 + vocab, nan);
    std::fill(row + stride * 6, row + stride * 6 + vocab, 1.5f);  // all tied: column 0
    std::vector<int32_t> got, want;
    for (Backend* be : {static_cast<Backend*>(gpu_.get()), static_cast<Backend*>(&cpu_)}) {
      Held x = PutF(*be, v, rows, stride), out = PutI(*be, {}, rows, 1);
      be->ArgMax(x.t.Cols(0, vocab), out.t);
      (be == &cpu_ ? want : got) = Get<int32_t>(*be, out.t);
    }
    EXPECT_EQ(got, want) << "vocab " << vocab;
    ASSERT_EQ(want.size(), static_cast<size_t>(rows));
    EXPECT_EQ(want[1], 10);
    EXPECT_EQ(want[2], vocab / 2);
    EXPECT_EQ(want[3], 17);
    EXPECT_EQ(want[4], vocab - 1);
    EXPECT_EQ(want[5], -1);
    EXPECT_EQ(want[6], 0);
  }
}

TEST_F(CudaOpCheck, BadInputIsAnErrorNotACrash) {
  Held a = PutF(*gpu_, Random(64, 1), 4, 16), w = PutF(*gpu_, Random(48, 2), 3, 16, DType::kBF16), o = PutF(*gpu_, {}, 4, 5);
  gpu_->Linear(a.t, w.t, o.t);  // out has 5 columns, w 3 rows
  const absl::Status s = gpu_->Synchronize();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// --- The indexer and sparse MLA on bf16 queries, bf16 paged caches and bf16 outputs ---
// The references are computed in float64 on the values exactly as stored (bf16-rounded where the
// tensor is BF16), so a bound holds only the rounding the kernel itself adds: f32 queries or pool rows
// it rounds to bf16 (u each), the probabilities it rounds before P · C (u), a bf16 output (u), and f32
// accumulation, for which a sum of m terms is within m·2⁻²³ of the exact sum of their magnitudes (2⁻²³
// rather than 2⁻²⁴ because the tensor cores may truncate), doubled for the order of the tensor cores'
// internal additions, which the PTX manual leaves open.
constexpr double kF32Sum = 2.0 / (1 << 23);

// The kernel's own bf16 rounding of an operand held as `dtype`: none for a BF16 tensor.
double RoundingOf(DType dtype) { return dtype == DType::kBF16 ? 0.0 : 1.01 * kUnitRoundoff; }

const char* NameOf(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

// All bits set: NaN in f32 and in bf16, so an element the kernel leaves unwritten cannot pass.
void Poison(CudaBackend& be, Tensor t) {
  ASSERT_EQ(cudaMemsetAsync(t.data, 0xff, static_cast<size_t>(t.rows * t.stride) * DTypeSize(t.dtype), be.stream()),
            cudaSuccess);
}

struct IndexerTypes {
  DType q, w, keys;
  float scale_sign;  // −1: a negative scale, which the kernel folds in by flipping the queries' signs
};

// The float64 score of row r against `key` and its bound for this kernel: IndexerScore64's bound is
// 2.01·u·M with M = Σ_h |w_h·scale|·Σ_d |q_d·k_d|; here the rounding is only that of f32 operands,
// plus the f32 sums (dim products per head, then heads weighted terms).
ScoreAndBound IndexerScoreFor(const IndexerTypes& types, const std::vector<float>& q, const std::vector<float>& w,
                              const float* key, int64_t r, int32_t heads, int32_t dim, double scale) {
  const ScoreAndBound sb = IndexerScore64(q, w, key, r, heads, dim, scale);
  const double magnitude = std::abs(sb.bound) / (2.01 * kUnitRoundoff);
  return {sb.score, (RoundingOf(types.q) + RoundingOf(types.keys) + (dim + heads + 4) * kF32Sum) * magnitude};
}

// Random indexer operands stored as `types` says (host copies hold exactly what the device holds).
struct IndexerOperands {
  std::vector<float> q, keys, w;
  Held gq, gk, gw;
};
IndexerOperands MakeIndexerOperands(CudaBackend& be, const PagedBatch& b, int32_t heads, int32_t dim,
                                    const IndexerTypes& types, uint32_t seed) {
  const int64_t n = static_cast<int64_t>(b.seq.size());
  IndexerOperands o;
  o.q = AsStored(Random(n * heads * dim, seed), types.q);
  o.keys = AsStored(Random(static_cast<size_t>(b.slots) * dim, seed + 1), types.keys);
  o.w = AsStored(Random(n * heads, seed + 2), types.w);
  o.gq = PutF(be, o.q, n, heads * dim, types.q);
  o.gk = PutF(be, o.keys, b.slots, dim, types.keys);
  o.gw = PutF(be, o.w, n, heads, types.w);
  return o;
}

// The logits themselves, before top-k, with every operand F32 or BF16: every visible column within
// the bound of the float64 scores, every later column left as the NaN poison written before the launch. The cases cover the
// kernel's paths: heads padded to a power of two (5, 20) or not (8, 16, 32, 64), dims padded to a
// whole 64-wide atom (16, 48) or not (64, 128), query counts that are not a multiple of the block's
// tokens, chunked prefill starting mid-sequence, several sequences in one block (batched decode),
// and a key range split over several blocks.
TEST_F(CudaOpCheck, IndexerLogitsMatchFloat64AndLeaveLaterColumnsUnwritten) {
  struct Case {
    int32_t heads, dim;
    std::vector<int32_t> lengths;
    int32_t chunk;
    IndexerTypes types;
  };
  const DType kB = DType::kBF16, kF = DType::kF32;
  // Every shape with all operands f32, and with: the engine's all-bf16 indexer at GLM-5's 32 × 128;
  // DsaModel::SelectKeys' f32 probe queries on a bf16 pool; padded heads and dims with a negative
  // scale; bf16 queries on an f32 pool.
  std::vector<Case> cases;
  for (const Case& c : {Case{32, 128, {3000, 700, 1, 2500}, 37, {kB, kB, kB, 1.f}},
                        Case{8, 64, {1000, 64, 65, 129}, 200, {kF, kF, kB, 1.f}},
                        Case{20, 48, {513, 17}, 70, {kB, kF, kB, -1.f}}, Case{64, 128, {4100}, 100, {kB, kB, kF, 1.f}},
                        Case{5, 16, {90, 3, 300}, 90, {kF, kB, kB, -1.f}}, Case{16, 64, {20000}, 8, {kB, kB, kB, 1.f}}}) {
    cases.push_back(c);
    cases.push_back(c);
    cases.back().types = {kF, kF, kF, 1.f};
  }
  for (const Case& c : cases) {
    const PagedBatch b = MakeBatch(c.lengths, c.chunk, 12);
    const int64_t n = static_cast<int64_t>(b.seq.size());
    const IndexerOperands o = MakeIndexerOperands(*gpu_, b, c.heads, c.dim, c.types, 51);
    const std::vector<float>& q = o.q;
    const std::vector<float>& keys = o.keys;
    const std::vector<float>& w = o.w;
    Held gl = PutF(*gpu_, {}, n, b.max_context);
    DeviceLayout dl = Upload(*gpu_, b);
    const float scale = c.types.scale_sign / std::sqrt(static_cast<float>(c.dim));
    Poison(*gpu_, gl.t);
    const std::string error = cuda::IndexerLogits(o.gq.t, o.gw.t, c.heads, o.gk.t, cuda::PagedRowsOf(dl.layout),
                                                  b.max_context, scale, gl.t, gpu_->stream());
    ASSERT_TRUE(error.empty()) << error;
    const std::vector<float> got = Get<float>(*gpu_, gl.t);
    double worst = 0.0;
    for (int64_t r = 0; r < n; ++r) {
      for (int32_t s = 0; s < b.max_context; ++s) {
        const float value = got[static_cast<size_t>(r) * b.max_context + s];
        if (s > b.pos[r]) {
          ASSERT_TRUE(std::isnan(value)) << "row " << r << " column " << s << " past the token was written";
          continue;
        }
        const auto [total, bound] = IndexerScoreFor(
            c.types, q, w, &keys[static_cast<size_t>(b.SlotOf(b.seq[r], s)) * c.dim], r, c.heads, c.dim, scale);
        const double err = std::abs(value - total), tol = bound + 1e-6 * (1.0 + std::abs(total));
        ASSERT_LE(err, tol) << "H" << c.heads << " D" << c.dim << " row " << r << " (pos " << b.pos[r] << ") column "
                            << s << ": " << value << " vs " << total;
        worst = std::max(worst, err / tol);
      }
    }
    std::printf("  indexer logits q %-4s w %-4s keys %-4s scale %+.0f H%-2d D%-3d %3ld rows: worst error / bound = %.3f\n",
                NameOf(c.types.q), NameOf(c.types.w), NameOf(c.types.keys), c.types.scale_sign, c.heads, c.dim,
                static_cast<long>(n), worst);
  }
}

// Selections through the backend's IndexerTopK: exact except where the float64 scores, within the
// bound above, leave the k-th place open — a near-tie: some perturbation of the scores within their
// bounds makes the GPU's set the top-k, i.e. every pick's upper bound reaches every non-pick's lower
// one. Such rows are detected and counted, never excused beyond the bound.
TEST_F(CudaOpCheck, IndexerSelectionsAgreeExceptAtDetectedNearTies) {
  struct Case {
    int32_t heads, dim, k;
    std::vector<int32_t> lengths;
    int32_t chunk;
    IndexerTypes types;
  };
  const DType kB = DType::kBF16, kF = DType::kF32;
  for (const Case& c : {Case{32, 128, 2048, {5000, 2100, 9000}, 24, {kB, kB, kB, 1.f}},
                        Case{16, 32, 64, {300, 77, 64, 1}, 40, {kF, kF, kB, 1.f}},
                        Case{32, 128, 2048, {5000, 2100, 9000}, 24, {kF, kF, kF, 1.f}},
                        Case{16, 32, 64, {300, 77, 64, 1}, 40, {kF, kF, kF, 1.f}},
                        Case{8, 64, 256, {1000, 256, 257}, 130, {kF, kF, kF, 1.f}}}) {
    const PagedBatch b = MakeBatch(c.lengths, c.chunk, 8);
    const int64_t n = static_cast<int64_t>(b.seq.size());
    const IndexerOperands o = MakeIndexerOperands(*gpu_, b, c.heads, c.dim, c.types, 61);
    const std::vector<float>& q = o.q;
    const std::vector<float>& keys = o.keys;
    const std::vector<float>& w = o.w;
    Held go = PutI(*gpu_, {}, n, c.k);
    DeviceLayout dl = Upload(*gpu_, b);
    const float scale = c.types.scale_sign / std::sqrt(static_cast<float>(c.dim));
    gpu_->IndexerTopK(o.gq.t, o.gw.t, c.heads, o.gk.t, dl.layout, scale, go.t);
    const std::vector<int32_t> got = Get<int32_t>(*gpu_, go.t);
    int64_t near_tie_rows = 0;
    for (int64_t r = 0; r < n; ++r) {
      const int32_t length = b.pos[r] + 1, k = std::min(c.k, length);
      std::vector<double> score(length), bound(length);
      for (int32_t s = 0; s < length; ++s) {
        const ScoreAndBound sb = IndexerScoreFor(c.types, q, w, &keys[static_cast<size_t>(b.SlotOf(b.seq[r], s)) * c.dim],
                                                 r, c.heads, c.dim, scale);
        score[s] = sb.score;
        bound[s] = sb.bound + 1e-6 * (1.0 + std::abs(sb.score));
      }
      const std::vector<int32_t> want = ExactTopK(std::vector<float>(score.begin(), score.end()).data(), length, c.k);
      const std::vector<int32_t> row(got.begin() + r * c.k, got.begin() + (r + 1) * c.k);
      for (int32_t i = k; i < c.k; ++i) ASSERT_EQ(row[i], -1) << "padding, row " << r;
      std::set<int32_t> got_set(row.begin(), row.begin() + k), want_set(want.begin(), want.begin() + k);
      ASSERT_EQ(static_cast<int32_t>(got_set.size()), k) << "duplicate or missing picks, row " << r;
      if (got_set == want_set) continue;
      double worst_pick = INFINITY, best_left = -INFINITY;
      for (int32_t s = 0; s < length; ++s) {
        if (got_set.count(s)) {
          worst_pick = std::min(worst_pick, score[s] + bound[s]);
        } else {
          best_left = std::max(best_left, score[s] - bound[s]);
        }
      }
      ASSERT_GE(worst_pick, best_left) << "row " << r << ": the GPU's selection differs beyond the bound";
      ++near_tie_rows;
    }
    std::printf("  indexer top-k q %-4s keys %-4s H%d D%d k%d: %ld rows, %ld differ only at detected near-ties\n",
                NameOf(c.types.q), NameOf(c.types.keys), c.heads, c.dim, c.k, static_cast<long>(n),
                static_cast<long>(near_tie_rows));
  }
}

// Sparse MLA with each of queries, pool and output f32 or bf16, over the f32 check's shapes (1 to 72
// heads, prefill blocks and the split-key decode path with its merge). Bound per output element, on
// the stored values: a score moves by at most e = (rounding of f32 q and pool + (width + 4) f32 sums)
// · |scale|·Σ_d |q_d·k_d|, so each probability by a factor within e^{±2e}; rounding the probabilities
// (and an f32 pool's C) to bf16 adds u of max|C| each; a bf16 output adds u of the value.
TEST_F(CudaOpCheck, SparseMlaMatchesFloat64ForF32AndBf16Operands) {
  struct Shape {
    int32_t heads, latent, rope, k;
    std::vector<int32_t> lengths;
    int32_t chunk;
  };
  struct Types {
    DType q, pool, out;
  };
  const DType kB = DType::kBF16, kF = DType::kF32;
  const std::vector<Shape> shapes = {
      Shape{4, 64, 16, 64, {200, 30, 90}, 17},     Shape{4, 32, 8, 16, {60, 20, 9}, 9},
      Shape{1, 32, 8, 16, {60}, 20},               Shape{8, 128, 32, 256, {700, 300}, 40},
      Shape{16, 512, 64, 512, {900, 300}, 4},      Shape{64, 512, 64, 2048, {3000, 2500}, 5},
      Shape{20, 512, 64, 2048, {2048, 600}, 3},    Shape{20, 512, 64, 256, {1200}, 140},
      Shape{64, 512, 64, 128, {400}, 140},         Shape{72, 64, 16, 64, {200, 90}, 9}};
  // The bundled models (4 heads, latent 64 + 16 and 32 + 8), the e2e model (8 heads, 128 + 32), one
  // head, 16/20/64 heads at 512 + 64 (GLM-4.7-Flash / GLM-5) and 72 heads (two head groups per token);
  // few tokens take the split-key path with its merge, 140 tokens one block per token. Every shape
  // all-f32 and all-bf16 (the engine's path); f32 queries on a bf16 pool (f32 out) and bf16 queries on
  // an f32 pool (bf16 out) on a prefill and a decode shape of GLM-5's width.
  std::vector<std::pair<Shape, Types>> cases;
  for (const Shape& s : shapes) {
    cases.push_back({s, Types{kF, kF, kF}});
    cases.push_back({s, Types{kB, kB, kB}});
  }
  for (int i : {5, 8}) {
    cases.push_back({shapes[i], Types{kF, kB, kF}});
    cases.push_back({shapes[i], Types{kB, kF, kB}});
  }
  for (const auto& [c, types] : cases) {
    const PagedBatch b = MakeBatch(c.lengths, c.chunk, 10);
    const int64_t n = static_cast<int64_t>(b.seq.size()), width = c.latent + c.rope;
    const std::vector<float> ql = AsStored(Random(n * c.heads * c.latent, 71), types.q);
    const std::vector<float> qr = AsStored(Random(n * c.heads * c.rope, 72), types.q);
    const std::vector<float> pool = AsStored(Random(static_cast<size_t>(b.slots) * width, 73), types.pool);
    std::vector<int32_t> idx(n * c.k, -1);
    std::mt19937 rng(74);
    for (int64_t r = 0; r < n; ++r) {
      std::vector<int32_t> visible(b.pos[r] + 1);
      std::iota(visible.begin(), visible.end(), 0);
      std::shuffle(visible.begin(), visible.end(), rng);
      const int32_t k = std::min<int32_t>(c.k, static_cast<int32_t>(visible.size()));
      std::copy_n(visible.begin(), k, idx.begin() + r * c.k);
    }
    std::fill_n(idx.begin(), c.k, -1);  // a token with no keys at all: its output is zero
    const float scale = 1.0f / std::sqrt(static_cast<float>(width));
    Held gql = PutF(*gpu_, ql, n, c.heads * c.latent, types.q), gqr = PutF(*gpu_, qr, n, c.heads * c.rope, types.q);
    Held gp = PutF(*gpu_, pool, b.slots, width, types.pool), gi = PutI(*gpu_, idx, n, c.k);
    Held go = PutF(*gpu_, {}, n, c.heads * c.latent, types.out);
    DeviceLayout dl = Upload(*gpu_, b);
    Poison(*gpu_, go.t);
    gpu_->SparseMlaAttention(gql.t, gqr.t, c.heads, gp.t, dl.layout, gi.t, scale, go.t);
    const std::vector<float> got = Get<float>(*gpu_, go.t);
    const double score_rounding = RoundingOf(types.q) + RoundingOf(types.pool) + (width + 4) * kF32Sum;
    const double prob_rounding = 1.01 * kUnitRoundoff + RoundingOf(types.pool) + 64 * kF32Sum;
    const double out_rounding = types.out == DType::kBF16 ? 1.01 * kUnitRoundoff : 0.0;
    std::vector<float> want(got.size()), bound(got.size());
    for (int64_t r = 0; r < n; ++r) {
      std::vector<const float*> rows;
      for (int32_t j = 0; j < c.k && idx[r * c.k + j] >= 0; ++j) {
        rows.push_back(&pool[static_cast<size_t>(b.SlotOf(b.seq[r], idx[r * c.k + j])) * width]);
      }
      for (int32_t h = 0; h < c.heads; ++h) {
        std::vector<double> s(rows.size());
        double max_s = -INFINITY, max_err = 0.0, max_c = 0.0;
        for (size_t j = 0; j < rows.size(); ++j) {
          double dot = 0.0, abs_dot = 0.0;
          for (int32_t d = 0; d < width; ++d) {
            const double qd = d < c.latent ? ql[(r * c.heads + h) * c.latent + d] : qr[(r * c.heads + h) * c.rope + d - c.latent];
            dot += qd * rows[j][d];
            abs_dot += std::abs(qd * rows[j][d]);
          }
          s[j] = dot * scale;
          max_s = std::max(max_s, s[j]);
          max_err = std::max(max_err, score_rounding * abs_dot * scale);
          for (int32_t d = 0; d < c.latent; ++d) max_c = std::max(max_c, std::abs(static_cast<double>(rows[j][d])));
        }
        double total = 0.0;
        for (double& v : s) total += (v = std::exp(v - max_s));
        for (int32_t d = 0; d < c.latent; ++d) {
          double acc = 0.0;
          for (size_t j = 0; j < rows.size(); ++j) acc += s[j] / total * rows[j][d];
          const size_t at = static_cast<size_t>((r * c.heads + h) * c.latent + d);
          want[at] = static_cast<float>(acc);
          bound[at] = static_cast<float>((std::expm1(2 * max_err) + prob_rounding) * max_c + out_rounding * std::abs(acc));
        }
      }
    }
    ExpectWithin(got, want, bound,
                 ("MLA q " + std::string(NameOf(types.q)) + " pool " + NameOf(types.pool) + " out " + NameOf(types.out) +
                  " H" + std::to_string(c.heads) + " C" + std::to_string(c.latent) + " n" + std::to_string(n))
                     .c_str());
  }
}

}  // namespace
}  // namespace indexcache
