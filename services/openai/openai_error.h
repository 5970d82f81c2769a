// Errors in the shape OpenAI's clients parse: {"error": {"message", "type", "param", "code"}} with the
// HTTP status the OpenAI API gives the same failure, so `openai` SDKs raise their usual exceptions
// (BadRequestError, AuthenticationError, NotFoundError, RateLimitError, …).
#pragma once

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace indexcache::openai {

// INVALID_ARGUMENT/OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, CANCELLED 499 (nginx's "client closed request": nobody reads it),
// UNIMPLEMENTED 501, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, anything else 500.
int HttpStatusOf(absl::StatusCode code);

// The error body for a non-OK status; `code` is OpenAI's machine-readable code ("model_not_found"),
// null when none fits.
nlohmann::json ErrorBody(const absl::Status& status, const char* code = nullptr);

}  // namespace indexcache::openai
