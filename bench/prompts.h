// Benchmark prompts: random token ids, never zeros (zeros can run faster than real data).
#pragma once

#include <cstdint>
#include <vector>

namespace indexcache::bench {

// `length` ids drawn from `seed`, below vocab - 2: the bundled models' bos/eos sit at the top of the
// vocabulary, and a prompt must not end early at one.
std::vector<int32_t> RandomPrompt(int32_t length, int32_t vocab, uint32_t seed);

}  // namespace indexcache::bench
