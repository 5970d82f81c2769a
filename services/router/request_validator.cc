#include "services/router/request_validator.h"

#include "services/common/sampling_from_proto.h"

#include <filesystem>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"
#include "services/router/request_id.h"

namespace indexcache {

absl::StatusOr<std::unique_ptr<RequestValidator>> RequestValidator::Load(const std::string& model_dir) {
  std::unique_ptr<RequestValidator> validator(new RequestValidator());
  validator->model_dir_ = model_dir;
  ASSIGN_OR_RETURN(validator->config_, LoadModelConfig(model_dir));
  const std::string tokenizer_path = model_dir + "/tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) {
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromFile(tokenizer_path);
    if (!tokenizer.ok()) return Annotate(tokenizer.status(), "loading the router's tokenizer");
    validator->tokenizer_ = std::move(*tokenizer);
  }
  return validator;
}

absl::StatusOr<std::vector<int32_t>> RequestValidator::Validate(const v1::GenerateRequest& request) const {
  RETURN_IF_ERROR(ValidateRequestLabel(request.request_id()));
  const v1::SamplingParameters& sampling = request.sampling();
  if (sampling.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d stop strings; at most %d are allowed", sampling.stop_size(), kMaxStopStrings));
  }
  for (int i = 0; i < sampling.stop_size(); ++i) {
    if (sampling.stop(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrFormat("stop[%d] is %d bytes long; at most %d are allowed", i,
                                                        sampling.stop(i).size(), kMaxStopStringBytes));
    }
  }
  if (sampling.stop_token_ids_size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrFormat("%d stop_token_ids; at most %d are allowed",
                                                      sampling.stop_token_ids_size(), kMaxStopTokenIds));
  }
  if (sampling.has_n() && (sampling.n() < 1 || sampling.n() > kMaxChoices)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("n must be in [1, %d] (choices per request), got %d", kMaxChoices, sampling.n()));
  }
  std::vector<int32_t> prompt;
  switch (request.input_case()) {
    case v1::GenerateRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("the request has no input: set `text` or `token_ids`");
    case v1::GenerateRequest::kText:
      if (request.text().empty()) return absl::InvalidArgumentError("the prompt is empty");
      if (tokenizer_ == nullptr) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "the model in %s has no tokenizer.json, so text prompts cannot be encoded; send token_ids",
            model_dir_));
      }
      prompt = tokenizer_->Encode(request.text());
      break;
    case v1::GenerateRequest::kTokenIds:
      prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty: token_ids has no ids");
      for (size_t i = 0; i < prompt.size(); ++i) {
        if (prompt[i] < 0 || prompt[i] >= config_.vocab_size) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "token_ids[%d] = %d is outside the vocabulary [0, %d)", i, prompt[i], config_.vocab_size));
        }
      }
      break;
  }
  const SamplingParams params = SamplingParamsFromProto(request.sampling());
  RETURN_IF_ERROR(indexcache::Validate(params, config_.vocab_size));
  const int64_t total = static_cast<int64_t>(prompt.size()) + params.max_new_tokens;
  if (total > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max_new_tokens (%d) exceeds the model's context of %d positions",
        prompt.size(), params.max_new_tokens, config_.max_position_embeddings));
  }
  return prompt;
}

}  // namespace indexcache
