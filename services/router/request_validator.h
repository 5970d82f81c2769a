// The router's front door: a GenerateRequest is checked and turned into prompt ids before it is queued,
// so a malformed request costs no worker time and gets INVALID_ARGUMENT naming the field (the workers
// validate again; the engine never trusts its callers). Knows the model from its directory:
// config.json for the vocabulary and context limit, tokenizer.json (when present) for text prompts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "common/sampling/sampling_params.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "indexcache/v1/generate.pb.h"

namespace indexcache {

// Engine sampling settings from the optional proto fields; an unset field keeps SamplingParams' default.

class RequestValidator {
 public:
  // Reads `model_dir`/config.json (required) and `model_dir`/tokenizer.json (optional).
  static absl::StatusOr<std::unique_ptr<RequestValidator>> Load(const std::string& model_dir);

  // The prompt ids of a valid request. INVALID_ARGUMENT, with a message naming the problem, for: a
  // request_id label that is too long or has other characters than request_id.h allows; no input; an
  // empty prompt; text without a tokenizer; an id outside the vocabulary; more than kMaxStopStrings stop
  // strings, one longer than kMaxStopStringBytes, more than kMaxStopTokenIds stop ids (each is checked
  // against every generated token: unbounded lists cost every step, and stop strings reach logs);
  // sampling values no sampler can honour (see Validate(SamplingParams): top_logprobs outside [0, 20] or
  // without logprobs among them); n outside [1, kMaxChoices]; prompt + max_new_tokens past the context
  // limit. (The request's whole size is bounded before this, by the router's gRPC limit.)
  static constexpr int kMaxStopStrings = 16;
  static constexpr size_t kMaxStopStringBytes = 256;
  static constexpr int kMaxStopTokenIds = 256;
  // sampling.n: each choice is a request on the workers (its own prefill and KV blocks) and a thread on
  // the router while it runs, so one client request may take at most this many (vLLM bounds nothing;
  // OpenAI's API allows 128 but serves far fewer in practice).
  static constexpr int kMaxChoices = 16;
  absl::StatusOr<std::vector<int32_t>> Validate(const v1::GenerateRequest& request) const;

  const ModelConfig& config() const { return config_; }
  bool has_tokenizer() const { return tokenizer_ != nullptr; }

 private:
  RequestValidator() = default;

  std::string model_dir_;
  ModelConfig config_;
  std::unique_ptr<BpeTokenizer> tokenizer_;  // null when the model has no tokenizer.json
};

}  // namespace indexcache
