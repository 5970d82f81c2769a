// Between the wire (indexcache.v1) and the engine: sampling settings. Proto3 `optional`
// fields left unset take the engine's defaults (SamplingParams), so an absent temperature never reads
// as 0 (greedy).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "common/sampling/sampling_params.h"
#include "indexcache/v1/generate.pb.h"

namespace indexcache {

// Copies the fields that are set; validation is the engine's (Engine::SubmitPrefill / Submit).
SamplingParams SamplingParamsFromProto(const ::indexcache::v1::SamplingParameters& proto);
// A worker request's: its sampling, and for a migrated request how many prompt ids were generated.
template <typename WorkerRequest>  // v1::PrefillRequest, v1::DecodeRequest
SamplingParams SamplingParamsOf(const WorkerRequest& request) {
  SamplingParams params = SamplingParamsFromProto(request.sampling());
  params.resumed_tokens = request.resumed_tokens();
  return params;
}


}  // namespace indexcache
