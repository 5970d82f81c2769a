// Early-return helpers for absl::Status / absl::StatusOr, the error convention of the whole engine:
// every function a caller can recover from returns a status instead of aborting.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define IC_STATUS_CONCAT_INNER(a, b) a##b
#define IC_STATUS_CONCAT(a, b) IC_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` yields a non-OK absl::Status.
#define RETURN_IF_ERROR(expr) IC_RETURN_IF_ERROR_IMPL(return, expr)

// `ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  IC_ASSIGN_OR_RETURN_IMPL(return, IC_STATUS_CONCAT(ic_statusor_, __LINE__), lhs, expr)

// The same two in coroutines (Boost.Asio's awaitables: the TCP handoff server's connections), which
// end with co_return; `expr` may co_await.
#define CO_RETURN_IF_ERROR(expr) IC_RETURN_IF_ERROR_IMPL(co_return, expr)
#define CO_ASSIGN_OR_RETURN(lhs, expr) \
  IC_ASSIGN_OR_RETURN_IMPL(co_return, IC_STATUS_CONCAT(ic_statusor_, __LINE__), lhs, expr)

#define IC_RETURN_IF_ERROR_IMPL(return_keyword, expr)    \
  do {                                                   \
    ::absl::Status ic_status_ = (expr);                  \
    if (!ic_status_.ok()) return_keyword ic_status_;     \
  } while (0)
#define IC_ASSIGN_OR_RETURN_IMPL(return_keyword, tmp, lhs, expr) \
  auto tmp = (expr);                                             \
  if (!tmp.ok()) return_keyword std::move(tmp).status();         \
  lhs = std::move(tmp).value()

namespace indexcache {

// Prefixes an error with where it happened ("loading layer 3: ...") and keeps its code.
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace indexcache
