// RETURN_IF_ERROR and ASSIGN_OR_RETURN (status_macros.h) for coroutines — Boost.Asio's awaitables,
// as the TCP handoff server's connections are — which end with co_return instead of return.
#pragma once

#include "common/util/status_macros.h"

// Returns from the enclosing coroutine when `expr` (which may co_await) yields a non-OK absl::Status.
#define CO_RETURN_IF_ERROR(expr)                \
  do {                                          \
    ::absl::Status ic_status_ = (expr);         \
    if (!ic_status_.ok()) co_return ic_status_; \
  } while (0)

// `CO_ASSIGN_OR_RETURN(auto x, co_await MakeX());` binds the value or returns the error.
#define CO_ASSIGN_OR_RETURN(lhs, expr) \
  IC_CO_ASSIGN_OR_RETURN_IMPL(IC_STATUS_CONCAT(ic_statusor_, __LINE__), lhs, expr)
#define IC_CO_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) co_return std::move(tmp).status(); \
  lhs = std::move(tmp).value()
