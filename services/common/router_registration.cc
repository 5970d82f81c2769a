#include "services/common/router_registration.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "common/auth/grpc_token.h"
#include "common/util/logging.h"

namespace indexcache {
namespace {

// One registry RPC may take this long at most, so Stop and a slow router never wait longer.
constexpr absl::Duration kRpcTimeout = absl::Seconds(2);

}  // namespace

RouterRegistration::RouterRegistration(std::string router_address, const ClusterToken& token, v1::RegisterRequest self,
                                       absl::Duration interval, LoadFn load)
    : router_address_(std::move(router_address)),
      self_(std::move(self)),
      load_(std::move(load)),
      stub_(v1::Registry::NewStub(InternalChannel(router_address_, token))),
      interval_(interval) {
  thread_ = std::thread([this] { Run(); });
}

RouterRegistration::~RouterRegistration() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void RouterRegistration::Poke() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    poked_ = true;
  }
  wake_.notify_all();
}

bool RouterRegistration::Contact(bool registered) {
  const absl::Duration timeout = std::min(kRpcTimeout, std::max(interval_, absl::Seconds(1)));
  grpc::Status status;
  if (registered) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    v1::HeartbeatRequest request;
    *request.mutable_load() = load_(router_has_);
    v1::HeartbeatResponse response;
    status = stub_->Heartbeat(&context, request, &response);
    if (status.ok() && response.known()) {
      router_has_ = response.cached_blocks();
      return Reached(status, true);
    }
    // A failed heartbeat keeps the registration: the router still knows this worker when it answers.
    if (!status.ok()) return Reached(status, true);
    if (request.load().draining()) {
      IC_LOG(Info) << "router " << router_address_ << " forgot this draining worker; it stays out of the pool";
      return Reached(status, false);
    }
    IC_LOG(Info) << "router " << router_address_ << " forgot this worker; registering again";
  }
  v1::RegisterRequest request = self_;
  // The router admits by capacity from the first request on; a registration starts its following of
  // the cached blocks afresh (the whole set).
  *request.mutable_load() = load_(v1::CachedBlocksCursor());
  // A draining worker takes no new work: joining the pool now would only churn the router's books.
  if (request.load().draining()) return false;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::RegisterResponse response;
  status = stub_->Register(&context, request, &response);
  if (status.ok()) {
    router_has_ = response.cached_blocks();
    if (response.heartbeat_interval_seconds() > 0) interval_ = absl::Seconds(response.heartbeat_interval_seconds());
    IC_LOG(Info) << "registered with router " << router_address_ << " as " << self_.worker_id() << " ("
                 << v1::WorkerRole_Name(self_.role()) << ", heartbeat every " << interval_ << ")";
  }
  return Reached(status, status.ok());
}

bool RouterRegistration::Reached(const grpc::Status& status, bool known) {
  if (status.ok() != reachable_) {
    reachable_ = status.ok();
    if (reachable_) {
      IC_LOG(Info) << "router " << router_address_ << " is reachable again";
    } else {
      IC_LOG(Warning) << "router " << router_address_ << " unreachable (" << status.error_message()
                      << "); serving on and retrying every " << interval_;
    }
  }
  return known;
}

void RouterRegistration::Run() {
  bool registered = false;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    poked_ = false;
    lock.unlock();
    registered = Contact(registered);
    lock.lock();
    wake_.wait_for(lock, absl::ToChronoNanoseconds(interval_), [&] { return stopping_ || poked_; });
  }
}

}  // namespace indexcache
