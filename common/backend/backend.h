// The backend seam. Model code describes the forward pass as a sequence of ops on device-resident
// Tensors; a backend executes them. Ops are enqueued in order and may run asynchronously: nothing
// returns data to the host except Download, so a CUDA backend can launch a whole step without host
// round trips (and capture it as a graph). The CPU backend (cpu/) is the reference every other
// backend is tested against.
//
// Conventions: weights are whatever `weight_dtype()` says (the backend converts at upload). Activations
// and paged-cache rows are stored as `activation_dtype()` (F32 on the CPU, BF16 on CUDA), except the
// residual stream, router weights and logits, which the model keeps F32. On a backend whose
// activation_dtype is BF16 every float tensor an op takes may be F32 or BF16, each independently: the
// op computes in f32 and rounds (to nearest even) when it stores. Index tensors are I32. Shapes are
// given as [rows, cols].
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/backend/tensor.h"

namespace indexcache {

class Backend;

// Ops recorded once by Backend::BeginCapture/EndCapture (a CUDA graph) and enqueued again by Replay,
// reading and writing the same device memory as when they were recorded.
class CapturedOps {
 public:
  virtual ~CapturedOps() = default;
  virtual absl::Status Replay() = 0;
  // How many ops (kernels, copies, memsets) were recorded.
  virtual size_t size() const = 0;
};

// Owns one device allocation; freed through the backend that made it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* backend, void* data, size_t bytes) : backend_(backend), data_(data), bytes_(bytes) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  // A [rows, cols] view of the start of the buffer.
  Tensor View(DType dtype, int64_t rows, int64_t cols) const {
    return Tensor::Matrix(data_, dtype, rows, cols);
  }

 private:
  void Reset();
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Host memory a backend copies to and from without an intermediate copy (page-locked on CUDA, so a
// device copy runs asynchronously at full bus speed). Owns its allocation; freed through its backend.
class HostBuffer {
 public:
  HostBuffer() = default;
  HostBuffer(Backend* backend, void* data, size_t bytes) : backend_(backend), data_(data), bytes_(bytes) {}
  HostBuffer(HostBuffer&& other) noexcept { *this = std::move(other); }
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer() { Reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void Reset();
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A device → host copy in flight (Backend::DownloadRowsAsync).
class AsyncHostCopy {
 public:
  virtual ~AsyncHostCopy() = default;
  // Blocks until the bytes are in host memory; the copy's error if it failed. Any thread may call it.
  virtual absl::Status Wait() = 0;
};

// Where each token of a forward batch sits. All tensors are I32 on the device.
struct BatchLayout {
  Tensor token_seq;     // [n, 1] row of `block_tables` that holds the token's sequence
  Tensor token_pos;     // [n, 1] absolute position of the token in its sequence
  Tensor slot_mapping;  // [n, 1] cache slot (block · block_size + offset) the token's entries go to
  Tensor block_tables;  // [num_seqs, max_blocks] block ids of each sequence, in order
  int32_t block_size = 0;
  int32_t max_context = 0;  // max over tokens of position + 1 (host-known: sizes workspaces)
};

// DeepSeek-V3-style sigmoid routing with group limits (GlmMoeDsaTopkRouter).
struct MoeRouting {
  int32_t num_experts = 0;
  int32_t top_k = 0;
  int32_t n_group = 1;
  int32_t topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// One run of Backend::UploadRows / DownloadRowsAsync: rows [row, row + rows) of the device tensor,
// dense at `host_offset` bytes into the host area.
struct RowRun {
  int64_t row = 0;
  int64_t rows = 0;
  size_t host_offset = 0;
};

// Wall-clock regions the engine reports on (IndexCache counters). A backend measures them the way
// that is exact for it: the CPU backend with a clock (ops are synchronous), CUDA with events.
enum class TimedRegion : uint8_t { kIndexer = 0, kAttention, kMoe, kCount };

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual DType weight_dtype() const = 0;
  virtual DType activation_dtype() const { return DType::kF32; }
  // The CUDA device ordinal the backend runs on; -1 off the GPU.
  virtual int cuda_device() const { return -1; }

  // --- memory and transfers ---------------------------------------------------------------
  virtual absl::StatusOr<Buffer> Allocate(size_t bytes) = 0;
  virtual void Free(void* data) = 0;
  // Copies `host` (float32 when dst is F32/BF16 — converted to dst's dtype —, int32 when I32) into dst,
  // in order with the ops around it. `host` may be reused or freed as soon as Upload returns.
  virtual void Upload(const void* host, Tensor dst) = 0;
  // Waits for every enqueued op, then copies src (any stride) to dense host memory: float32 when src is
  // F32 or BF16 (widened), int32 when I32.
  virtual absl::Status Download(Tensor src, void* host) = 0;
  virtual absl::Status Synchronize() = 0;
  virtual void Fill(Tensor dst, float value) = 0;

  // --- moving tensors as they are stored (the KV handoff: no widening, no rounding) ----------
  virtual absl::StatusOr<HostBuffer> AllocateHost(size_t bytes);
  virtual void FreeHost(void* data);
  // Copies rows of `src` byte for byte into `host`, run by run, once every op enqueued so far has
  // run, without holding back the ops enqueued after it and with no kernel (CUDA: copy-engine
  // transfers on a copy stream of its own, so a prefill's next layers compute while the last ones'
  // rows travel to the host). `host` (from AllocateHost, or device memory from Allocate for rows that
  // leave from the GPU) must stay valid, and the rows unwritten, until the returned copy's Wait has
  // returned.
  virtual absl::StatusOr<std::unique_ptr<AsyncHostCopy>> DownloadRowsAsync(Tensor src, absl::Span<const RowRun> runs,
                                                                           char* host) = 0;
  // Copies rows already in dst's dtype from `host` (host memory, or device memory from Allocate for
  // rows received onto the GPU) into rows of dst byte for byte, run by run, in order with the ops
  // around it, and with no kernel (CUDA: copy-engine transfers, which a process
  // sharing the GPU does not wait behind, where a kernel of this process's would interrupt it).
  // `keep` holds `host` (AllocateHost memory, or any on the CPU) and is released once the copies have
  // read it (on CUDA by a thread that waits for an event recorded after them); with no `keep` the copies have read `host` when this
  // returns.
  virtual void UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                          std::shared_ptr<const void> keep) = 0;
  // Copies src's rows byte for byte (its dtype) densely into `host` in order with the ops around it,
  // without waiting: the bytes are there once a later Download or Synchronize has returned. `host`
  // is AllocateHost memory (on CUDA the copy waits for nothing only from pinned memory).
  virtual void DownloadInOrder(Tensor src, char* host) = 0;

  // --- dense ops --------------------------------------------------------------------------
  // out[r] = table[ids[r]]                                     ids: I32 [n, 1]
  virtual void Embedding(Tensor table, Tensor ids, Tensor out) = 0;
  // out[m, n] = x[m, k] · w[n, k]ᵀ  (torch.nn.Linear without bias)
  virtual void Linear(Tensor x, Tensor w, Tensor out) = 0;
  // out += x · wᵀ: a residual connection folded into the product's epilogue (no add, no intermediate).
  virtual void LinearAdd(Tensor x, Tensor w, Tensor out) = 0;
  // Per head h: out[:, h·o:(h+1)·o] = x[:, h·i:(h+1)·i] · w_hᵀ with w = [heads·o, i] stacked by head.
  virtual void HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) = 0;
  // out = weight ⊙ x / sqrt(mean(x²) + eps), per row.
  virtual void RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) = 0;
  // out = (x - mean) / sqrt(var + eps) ⊙ weight + bias, per row.
  virtual void LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) = 0;
  // In place, for every head h of every row r: rotates the `rope_dim` values starting at column
  // h·head_stride + rope_offset by position token_pos[r], DeepSeek's interleaved pairs (x0,x1),(x2,x3)…,
  // writing the result de-interleaved (evens' rotation, then odds'), as transformers does.
  virtual void RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset,
                               int32_t rope_dim, float theta, Tensor token_pos) = 0;
  // out[:, j] = silu(gate_up[:, j]) · gate_up[:, I + j] with I = out.cols.
  virtual void SiluMul(Tensor gate_up, Tensor out) = 0;
  // x += y
  virtual void Add(Tensor x, Tensor y) = 0;
  // dst[r] = src[row_ids[r]]                                   row_ids: I32 [n, 1]
  virtual void GatherRows(Tensor src, Tensor row_ids, Tensor dst) = 0;
  // out[r] = the lowest column holding row r's largest value, NaN counting as -inf; -1 when the row
  // has no value above -inf. Greedy sampling's choice (common/sampling/sampler.h), made where the
  // logits are.                                                out: I32 [n, 1]
  virtual void ArgMax(Tensor x, Tensor out) = 0;
  // out[r] = the token the sampling pipeline (common/sampling/sampler.h: temperature, top-k, top-p,
  // min-p, inverse CDF; SamplingPipeline::Run is the definition) draws from row r with draws[r], or -1
  // when the row has no value above -inf. draws: I32 [n, kSamplingDrawWords], each row a SamplingDraw
  // byte for byte (common/sampling/sampling_draw.h): the request's parameters and the uniform its
  // Sampler drew on the host. Randomness stays on the host; the op does the O(vocab) work where the
  // logits are, so a sampled row costs one id of download instead of its logits. Temperature-0 rows
  // get ArgMax's answer.                                       out: I32 [n, 1]
  virtual void SampleTokens(Tensor x, Tensor draws, Tensor out) = 0;

  // --- paged cache and DeepSeek Sparse Attention ------------------------------------------
  // pool[slot_mapping[r]] = src[r] for every row r whose slot is >= 0; a negative slot writes nothing
  // (the padding rows of a captured decode batch).
  virtual void WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) = 0;
  // The lightning indexer's selection for every token r of the batch, over the keys of its own
  // sequence at positions 0..token_pos[r]:
  //   I[r, s] = Σ_h head_weights[r, h] · ReLU(scale · q[r, h]·key[s])
  // top-k positions by I, k = min(topk, pos + 1), written to out[r, 0..k) (descending score) and -1
  // after. q: [n, H·D]; head_weights: [n, H]; key_pool: [slots, D]; out: I32 [n, topk].
  virtual void IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool,
                           const BatchLayout& batch, float scale, Tensor out) = 0;
  // MLA attention in the absorbed (latent) form, restricted to `indices` (positions, -1 = none):
  //   score[h, s] = scale · (q_latent[r, h]·c[s] + q_rope[r, h]·k_rope[s]),  c/k_rope from latent_pool
  //   out[r, h] = Σ_s softmax(score[h])_s · c[s]
  // q_latent: [n, H·C]; q_rope: [n, H·R]; latent_pool: [slots, C + R]; out: [n, H·C].
  virtual void SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                                  const BatchLayout& batch, Tensor indices, float scale,
                                  Tensor out) = 0;

  // --- mixture of experts ------------------------------------------------------------------
  // Router: sigmoid(x · gate_wᵀ) + correction bias picks, weights from the un-biased scores.
  // topk_ids: I32 [n, K]; topk_weights: F32 [n, K].
  virtual void MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing,
                        Tensor topk_ids, Tensor topk_weights) = 0;
  // out += Σ_k topk_weights[r, k] · expert_{topk_ids[r, k]}(x[r]) with SwiGLU experts, over the
  // experts [first_expert, first_expert + num_experts) the weights hold (expert parallelism: this
  // rank's; ids outside that range contribute nothing here):
  // gate_up: [E·2I, H] (gate rows then up rows per expert); down: [E·H, I], E = num_experts.
  virtual void MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts,
                          Tensor topk_ids, Tensor topk_weights, Tensor out, int32_t first_expert) = 0;

  // --- timing -------------------------------------------------------------------------------
  virtual void BeginRegion(TimedRegion region) = 0;
  virtual void EndRegion(TimedRegion region) = 0;
  // Seconds spent in `region` in the regions that finished since the last call for it. Never waits
  // for the device: a region still running counts at a later call (after a synchronizing op, such
  // as a Download, every region enqueued before it has finished). Regions enqueued while capturing
  // are not measured.
  virtual double TakeRegionSeconds(TimedRegion region) = 0;

  // --- capture (optional: CUDA graphs) --------------------------------------------------------
  // Between BeginCapture and EndCapture, ops are recorded, not run. A recording keeps the device
  // addresses it was given and the op-internal scratch areas as they were, so a caller runs the same
  // ops once beforehand (which sizes that scratch: nothing may be allocated while recording) and
  // replays only while scratch_epoch() is unchanged. Upload, Download and Synchronize may not be
  // called while capturing.
  virtual bool SupportsCapture() const { return false; }
  virtual absl::Status BeginCapture();
  virtual absl::StatusOr<std::unique_ptr<CapturedOps>> EndCapture();
  // Changes whenever an op-internal scratch area moves (earlier recordings then point at freed memory).
  virtual uint64_t scratch_epoch() const { return 0; }
};

// Makes the backend named by `device` ("cpu"; "cuda" once that backend exists).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device, int num_threads = 0);

}  // namespace indexcache
