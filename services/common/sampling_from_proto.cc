#include "services/common/sampling_from_proto.h"

#include <string>

namespace indexcache {

SamplingParams SamplingParamsFromProto(const ::indexcache::v1::SamplingParameters& proto) {
  SamplingParams params;
  if (proto.has_temperature()) params.temperature = proto.temperature();
  if (proto.has_top_k()) params.top_k = proto.top_k();
  if (proto.has_top_p()) params.top_p = proto.top_p();
  if (proto.has_min_p()) params.min_p = proto.min_p();
  if (proto.has_seed()) params.seed = proto.seed();
  if (proto.has_max_new_tokens()) params.max_new_tokens = proto.max_new_tokens();
  if (proto.has_ignore_eos()) params.ignore_eos = proto.ignore_eos();
  if (proto.has_logprobs()) params.logprobs = proto.logprobs();
  if (proto.has_top_logprobs()) params.top_logprobs = proto.top_logprobs();
  params.stop_strings.assign(proto.stop().begin(), proto.stop().end());
  params.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  return params;
}

}  // namespace indexcache
