// The router's admission queue and its table of in-flight requests.
//
// A request is admitted when it passed the front door; it stays "queued" until a prefill worker starts
// on it (it waits in the AdmissionQueue until workers have room), and in flight until its stream ends.
// A request a worker refused, or whose first attempt failed, is queued again.
// The queue is bounded: past `max_queued` waiting requests, admission answers RESOURCE_EXHAUSTED, which
// pushes back on clients instead of letting waits grow without bound. The table lets Abort(request_id)
// reach a request from another RPC: it cancels the worker calls the request has attached.
// A request with n choices (sampling.n) is one entry whose choices run as n calls through the queue:
// it holds n queue slots, each choice leaving and returning its own, and one Abort cancels them all.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"

namespace indexcache {

class RequestTable;

// One admitted request, shared by its Generate handler (the calls of its choices) and the Abort RPC.
class RequestHandle {
 public:
  RequestHandle(RequestTable* table, std::string id, int choices = 1)
      : table_(table), id_(std::move(id)), queued_(choices, true) {}

  const std::string& id() const { return id_; }
  // Registers a worker call so that Abort cancels it. False once the request was aborted: the call
  // must not start.
  bool Attach(grpc::ClientContext* call);
  void Detach(grpc::ClientContext* call);
  // Marks the request aborted and cancels every attached call.
  void Abort();
  bool aborted() const;
  // Choice `choice` leaves the admission queue; later calls do nothing until ReturnToQueue.
  void LeaveQueue(int choice);
  // Back in the queue after leaving it (admitted already, so never refused for a full queue).
  void ReturnToQueue(int choice);
  // Every choice leaves the queue (the request finished).
  void LeaveQueueAll();

 private:
  RequestTable* const table_;
  const std::string id_;
  mutable std::mutex mu_;
  bool aborted_ = false;
  std::vector<bool> queued_;  // per choice
  std::vector<grpc::ClientContext*> calls_;
};

class RequestTable {
 public:
  explicit RequestTable(int max_queued) : max_queued_(max_queued) {}

  // Admits `id` into the queue with `choices` slots. RESOURCE_EXHAUSTED when they would take the
  // queue past `max_queued` waiting choices; ALREADY_EXISTS when a request with this id is in flight.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Admit(const std::string& id, int choices = 1);
  // Removes a finished request (and its queue slot, if it still holds one).
  void Finish(const std::shared_ptr<RequestHandle>& request);
  // Aborts the in-flight request `id`; false when there is none.
  bool Abort(const std::string& id);

  int queued() const;
  int in_flight() const;
  // Blocks until no request is in flight or `deadline` passes; true when the table emptied.
  bool WaitUntilEmpty(absl::Time deadline);

 private:
  friend class RequestHandle;
  void LeaveQueue();
  void ReturnToQueue();

  const int max_queued_;
  mutable std::mutex mu_;
  std::condition_variable emptied_;
  int queued_ = 0;
  absl::flat_hash_map<std::string, std::shared_ptr<RequestHandle>> requests_;
};

}  // namespace indexcache
