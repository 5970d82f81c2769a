#include "indexcache/client_types.h"

namespace indexcache::client {

GenerateRequest GenerateRequest::FromText(std::string text) {
  GenerateRequest request;
  request.input = std::move(text);
  return request;
}

GenerateRequest GenerateRequest::FromIds(std::vector<int32_t> ids) {
  GenerateRequest request;
  request.input = std::move(ids);
  return request;
}

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
    case FinishReason::kUnspecified: break;
  }
  return "unspecified";
}

}  // namespace indexcache::client
