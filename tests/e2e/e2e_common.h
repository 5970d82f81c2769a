// What the whole-cluster tests share: the model they serve (the moe_freq2 golden: MoE, Shared layers,
// transformers' greedy continuation known), the `indexcache` binary whose services they start, and the
// greedy request they send through the C++ SDK.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "indexcache/client.h"
#include "nlohmann/json.hpp"

namespace indexcache::e2e {

inline const std::string kModel = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";
inline const std::string kBinary = std::string(INDEXCACHE_BINARY_DIR) + "/tools/indexcache";

// The golden's prompt ids.
inline std::vector<int32_t> GoldenInput() {
  std::ifstream in(kModel + "/expected.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str())["input_ids"].get<std::vector<int32_t>>();
}

// Greedy decoding of exactly `max_new` tokens (EOS ignored), so outputs compare token for token.
inline client::GenerateRequest Greedy(std::vector<int32_t> prompt, int32_t max_new) {
  client::GenerateRequest request = client::GenerateRequest::FromIds(std::move(prompt));
  request.sampling.temperature = 0.0f;
  request.sampling.max_new_tokens = max_new;
  request.sampling.ignore_eos = true;
  return request;
}

}  // namespace indexcache::e2e
