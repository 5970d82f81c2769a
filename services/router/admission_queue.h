// The router's line of requests waiting for room on the workers.
//
// A request the cluster cannot start now — no decode worker has the KV blocks its admission
// reserves, or no prefill worker has room under its bound on queued prompt tokens (worker_capacity.h)
// — waits here rather than failing, as SGLang's and vLLM's schedulers keep a waiting queue. The line
// is FIFO: only the request first in line is placed, so a long prompt is not passed over forever by
// short ones. The first in line tries again whenever a worker may have room it lacked (a request left
// a worker's ledger, a load report arrived, a worker joined: WorkerRegistry's capacity_changed) and
// every `poll_interval`; the others look at their deadline and their client that often.
// A request keeps its ticket for its whole life, so one that a worker refused after all (its room was
// taken between two load reports) comes back to its place, ahead of those that arrived after it.
//
// How many requests may wait is bounded elsewhere: RequestTable admits at most max_queued_requests.
//
//   AdmissionQueue queue(registry);              // registry's capacity_changed calls queue.Notify()
//   const AdmissionQueue::Ticket ticket = queue.NewTicket();
//   ASSIGN_OR_RETURN(Placement placement, queue.Wait(ticket, demand, {}, {}, deadline, interrupted));
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "services/router/worker_registry.h"

namespace indexcache {

class AdmissionQueue {
 public:
  using Ticket = uint64_t;

  explicit AdmissionQueue(WorkerRegistry& registry, absl::Duration poll_interval = absl::Milliseconds(20));

  // A place in line, in arrival order.
  Ticket NewTicket();

  // Waits in line until the request is placed on a decode and a prefill worker (WorkerRegistry::
  // TryPlace). Ends early with the registry's error (no worker of a role, can never fit), with
  // DEADLINE_EXCEEDED at `deadline` (the message says what the request waited for), or with the
  // status `interrupted` returns once it is not OK (the client went away, an Abort).
  absl::StatusOr<Placement> Wait(Ticket ticket, const Demand& demand, absl::Span<const std::string> exclude_decode,
                                 absl::Span<const std::string> exclude_prefill, absl::Time deadline,
                                 const std::function<absl::Status()>& interrupted);

  // A worker may have room it lacked: the first in line tries again.
  void Notify();

  // Requests in line now.
  int waiting() const;

 private:
  WorkerRegistry& registry_;
  const absl::Duration poll_interval_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::set<Ticket> line_;      // guarded by mu_; the first in line is line_.begin()
  Ticket next_ticket_ = 0;     // guarded by mu_
  uint64_t generation_ = 0;    // guarded by mu_; bumped by every Notify, so that none is missed
};

}  // namespace indexcache
