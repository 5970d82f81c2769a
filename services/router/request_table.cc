#include "services/router/request_table.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace indexcache {

bool RequestHandle::Attach(grpc::ClientContext* call) {
  std::lock_guard<std::mutex> lock(mu_);
  if (aborted_) return false;
  calls_.push_back(call);
  return true;
}

void RequestHandle::Detach(grpc::ClientContext* call) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.erase(std::remove(calls_.begin(), calls_.end(), call), calls_.end());
}

void RequestHandle::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  for (grpc::ClientContext* call : calls_) call->TryCancel();
}

bool RequestHandle::aborted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return aborted_;
}

void RequestHandle::LeaveQueue(int choice) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!queued_.at(choice)) return;
    queued_[choice] = false;
  }
  table_->LeaveQueue();
}

void RequestHandle::ReturnToQueue(int choice) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queued_.at(choice)) return;
    queued_[choice] = true;
  }
  table_->ReturnToQueue();
}

void RequestHandle::LeaveQueueAll() {
  for (int choice = 0; choice < static_cast<int>(queued_.size()); ++choice) LeaveQueue(choice);
}

absl::StatusOr<std::shared_ptr<RequestHandle>> RequestTable::Admit(const std::string& id, int choices) {
  std::lock_guard<std::mutex> lock(mu_);
  if (requests_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrFormat("a request with id '%s' is already in flight", id));
  }
  if (queued_ + choices > max_queued_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the router's queue is full (%d requests waiting for room on the workers); retry later", queued_));
  }
  queued_ += choices;
  auto handle = std::make_shared<RequestHandle>(this, id, choices);
  requests_.emplace(id, handle);
  return handle;
}

void RequestTable::Finish(const std::shared_ptr<RequestHandle>& request) {
  request->LeaveQueueAll();
  std::lock_guard<std::mutex> lock(mu_);
  requests_.erase(request->id());
  if (requests_.empty()) emptied_.notify_all();
}

bool RequestTable::Abort(const std::string& id) {
  std::shared_ptr<RequestHandle> handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return false;
    handle = it->second;
  }
  handle->Abort();
  return true;
}

int RequestTable::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

int RequestTable::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(requests_.size());
}

bool RequestTable::WaitUntilEmpty(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  auto empty = [this] { return requests_.empty(); };
  if (deadline == absl::InfiniteFuture()) {
    emptied_.wait(lock, empty);
    return true;
  }
  return emptied_.wait_until(lock, absl::ToChronoTime(deadline), empty);
}

void RequestTable::LeaveQueue() {
  std::lock_guard<std::mutex> lock(mu_);
  --queued_;
}

void RequestTable::ReturnToQueue() {
  std::lock_guard<std::mutex> lock(mu_);
  ++queued_;
}

}  // namespace indexcache
