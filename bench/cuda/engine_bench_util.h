// Small pieces the engine-level CUDA benchmarks share (cuda_e2e_bench, cuda_long_context_bench).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace indexcache::bench {

// "2048,8192,16384" → {2048, 8192, 16384}.
inline std::vector<int32_t> ParseList(const std::string& text) {
  std::vector<int32_t> out;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = text.find(',', start);
    out.push_back(std::stoi(text.substr(start, comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// A deterministic prompt of `length` ids below vocab - 2 (no special tokens).
inline std::vector<int32_t> Prompt(int32_t length, int32_t vocab) {
  std::vector<int32_t> ids(length);
  for (int32_t i = 0; i < length; ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % (vocab - 2));
  return ids;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace indexcache::bench
