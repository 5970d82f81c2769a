#include "proto_convert.h"

namespace indexcache::client {
namespace {

void SetSampling(const SamplingParams& in, v1::SamplingParameters& out) {
  if (in.temperature) out.set_temperature(*in.temperature);
  if (in.top_k) out.set_top_k(*in.top_k);
  if (in.top_p) out.set_top_p(*in.top_p);
  if (in.min_p) out.set_min_p(*in.min_p);
  if (in.seed) out.set_seed(*in.seed);
  if (in.max_new_tokens) out.set_max_new_tokens(*in.max_new_tokens);
  if (in.ignore_eos) out.set_ignore_eos(*in.ignore_eos);
  for (const std::string& stop : in.stop) out.add_stop(stop);
  for (int32_t id : in.stop_token_ids) out.add_stop_token_ids(id);
  if (in.logprobs) out.set_logprobs(*in.logprobs);
  if (in.top_logprobs) out.set_top_logprobs(*in.top_logprobs);
  if (in.n) out.set_n(*in.n);
}

TokenLogprobs FromProto(const v1::TokenLogprobs& t) {
  TokenLogprobs out{.token_id = t.token_id(), .logprob = t.logprob(), .top_logprobs = {}};
  for (const v1::Logprob& top : t.top_logprobs()) out.top_logprobs.push_back({top.token_id(), top.logprob()});
  return out;
}

FinishReason FromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::STOP: return FinishReason::kStop;
    case v1::LENGTH: return FinishReason::kLength;
    case v1::ABORT: return FinishReason::kAbort;
    case v1::ERROR: return FinishReason::kError;
    default: return FinishReason::kUnspecified;
  }
}

Timings FromProto(const v1::Timings& t) {
  return Timings{.queue_seconds = t.queue_seconds(),
                 .prefill_seconds = t.prefill_seconds(),
                 .handoff_seconds = t.handoff_seconds(),
                 .first_token_seconds = t.first_token_seconds(),
                 .total_seconds = t.total_seconds(),
                 .mean_inter_token_seconds = t.mean_inter_token_seconds()};
}

FinalInfo FromProto(const v1::FinalInfo& f) {
  return FinalInfo{.finish_reason = FromProto(f.finish_reason()),
                   .error = f.error(),
                   .prompt_tokens = f.prompt_tokens(),
                   .generated_tokens = f.generated_tokens(),
                   .timings = FromProto(f.timings()),
                   .index_pattern = f.index_pattern(),
                   .prefill_worker = f.prefill_worker(),
                   .decode_worker = f.decode_worker()};
}

}  // namespace

v1::GenerateRequest ToProto(const GenerateRequest& request) {
  v1::GenerateRequest out;
  if (const auto* text = std::get_if<std::string>(&request.input)) {
    out.set_text(*text);
  } else {
    for (int32_t id : std::get<std::vector<int32_t>>(request.input)) out.mutable_token_ids()->add_ids(id);
  }
  SetSampling(request.sampling, *out.mutable_sampling());
  out.set_request_id(request.request_id);
  return out;
}

GenerateChunk FromProto(const v1::GenerateResponse& response) {
  GenerateChunk chunk;
  chunk.request_id = response.request_id();
  chunk.index = response.index();
  for (const v1::TokenLogprobs& logprobs : response.logprobs()) chunk.logprobs.push_back(FromProto(logprobs));
  chunk.token_ids.assign(response.token_ids().begin(), response.token_ids().end());
  chunk.text = response.text();
  if (response.has_final()) chunk.final = FromProto(response.final());
  return chunk;
}

ModelInfo FromProto(const v1::ModelInfoResponse& r) {
  return ModelInfo{.architecture = r.architecture(),
                   .num_layers = r.num_layers(),
                   .hidden_size = r.hidden_size(),
                   .vocab_size = r.vocab_size(),
                   .index_topk = r.index_topk(),
                   .index_pattern = r.index_pattern(),
                   .num_full_layers = r.num_full_layers(),
                   .max_context = r.max_context(),
                   .has_tokenizer = r.has_tokenizer(),
                   .model_fingerprint = r.model_fingerprint(),
                   .prefill_workers = r.prefill_workers(),
                   .decode_workers = r.decode_workers(),
                   .length_patterns = r.length_patterns()};
}

}  // namespace indexcache::client
