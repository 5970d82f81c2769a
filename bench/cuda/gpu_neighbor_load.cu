// A second process's GPU work beside a prefill, at the rate a co-located decode worker imports a
// handoff (issue 12): what each way of writing received rows into the KV pools costs the process
// that shares the GPU. Run it in the background while `indexcache_cluster_ttft_bench engine-prefill`
// times the engine, one mode per run:
//   copies      pinned host → device pool, one cudaMemcpyAsync per `--run-kb` run (copy engine only)
//   copies-hostfunc  the same copies, each batch followed by a host function in the stream
//               (cudaLaunchHostFunc, as an import that frees its rows from a stream callback) instead
//               of the host waiting for the stream
//   scatter     pinned host → device staging, then a kernel that scatters the rows into the pool
//               (what an import that writes through slot ids does)
//   kernel      the scatter kernel alone, no copy
// Each period moves `--batch-mb` and waits for it, paced to `--gbps`, until `--seconds` pass. Prints
// one JSON line with what it moved.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

__global__ void ScatterRows(const uint4* src, uint4* dst, size_t words, size_t pool_words) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < words; i += size_t{gridDim.x} * blockDim.x) {
    // A permutation of whole 1 KiB rows, so writes land apart as slot ids scatter them.
    const size_t row = i / 64, word = i % 64;
    const size_t target = (row * 7919) % (pool_words / 64);
    dst[target * 64 + word] = src[i];
  }
}

bool Ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "gpu_neighbor_load: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "copies";
  double gbps = 2.0, seconds = 60.0, batch_mb = 4.0, run_kb = 72.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--mode") mode = value;
    else if (flag == "--gbps") gbps = std::atof(value);
    else if (flag == "--seconds") seconds = std::atof(value);
    else if (flag == "--batch-mb") batch_mb = std::atof(value);
    else if (flag == "--run-kb") run_kb = std::atof(value);
    else {
      std::fprintf(stderr, "usage: gpu_neighbor_load --mode copies|copies-hostfunc|scatter|kernel [--gbps G] "
                           "[--seconds S] "
                           "[--batch-mb M] [--run-kb K]\n");
      return 2;
    }
  }
  const bool host_func = mode == "copies-hostfunc";
  const bool copies = mode == "copies" || host_func;
  if (!copies && mode != "scatter" && mode != "kernel") {
    std::fprintf(stderr, "gpu_neighbor_load: unknown --mode '%s'\n", mode.c_str());
    return 2;
  }
  const size_t batch = static_cast<size_t>(batch_mb * (1 << 20)) / 1024 * 1024;
  const size_t run = std::max<size_t>(1024, static_cast<size_t>(run_kb * 1024) / 16 * 16);
  const size_t pool_bytes = size_t{256} << 20;
  void *host = nullptr, *staging = nullptr, *pool = nullptr;
  cudaStream_t stream;
  if (!Ok(cudaMallocHost(&host, batch), "pinned host") || !Ok(cudaMalloc(&staging, batch), "staging") ||
      !Ok(cudaMalloc(&pool, pool_bytes), "pool") || !Ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream")) {
    return 1;
  }
  const auto period = std::chrono::duration<double>(batch / (gbps * 1e9));
  const auto start = std::chrono::steady_clock::now();
  auto next = start;
  size_t moved = 0, batches = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::duration<double>(seconds)) {
    if (copies) {
      for (size_t off = 0; off < batch; off += run) {
        const size_t bytes = std::min(run, batch - off);
        // Runs land a pool block apart, as a sequence's blocks do.
        const size_t dst = (off / run * 2 * run) % (pool_bytes - run);
        if (!Ok(cudaMemcpyAsync(static_cast<char*>(pool) + dst, static_cast<char*>(host) + off, bytes,
                                cudaMemcpyHostToDevice, stream), "copy")) return 1;
      }
    } else {
      if (mode == "scatter" &&
          !Ok(cudaMemcpyAsync(staging, host, batch, cudaMemcpyHostToDevice, stream), "staging copy")) return 1;
      ScatterRows<<<264, 256, 0, stream>>>(static_cast<const uint4*>(staging), static_cast<uint4*>(pool), batch / 16,
                                            pool_bytes / 16);
      if (!Ok(cudaGetLastError(), "scatter")) return 1;
    }
    if (host_func) {
      // The stream runs the function after the batch's copies; the host never waits for it.
      static std::atomic<size_t> released{0};
      const cudaHostFn_t release = [](void*) { released.fetch_add(1, std::memory_order_relaxed); };
      if (!Ok(cudaLaunchHostFunc(stream, release, nullptr), "host function")) return 1;
    } else if (!Ok(cudaStreamSynchronize(stream), "sync")) {
      return 1;
    }
    moved += batch;
    ++batches;
    next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(period);
    std::this_thread::sleep_until(next);
  }
  if (!Ok(cudaStreamSynchronize(stream), "sync")) return 1;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"mode\": \"%s\", \"batches\": %zu, \"bytes\": %zu, \"seconds\": %.3f, \"gbps\": %.3f}\n",
              mode.c_str(), batches, moved, elapsed, moved / elapsed / 1e9);
  return 0;
}
