// A worker's membership in the router's registry: Register once, then Heartbeat with the worker's
// load every interval; register again when the router answers known=false (it restarted or dropped
// the worker). An unreachable router is logged and retried, never fatal: the worker keeps serving
// whoever calls it directly. Role-neutral: the caller fills the RegisterRequest.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "indexcache/v1/internal.grpc.pb.h"

namespace indexcache {

class RouterRegistration {
 public:
  // Builds a load report for a router that follows the worker's cached blocks up to the cursor.
  using LoadFn = std::function<::indexcache::v1::WorkerLoad(const ::indexcache::v1::CachedBlocksCursor&)>;

  // `router_address` is the router's internal address; every call carries `token`. `load` runs on the
  // registration thread before every heartbeat, with the cursor the router's last answer named.
  // `interval` is used until the router's RegisterResponse names its own.
  RouterRegistration(std::string router_address, const ClusterToken& token, ::indexcache::v1::RegisterRequest self,
                     absl::Duration interval, LoadFn load);
  // Stops the thread (an RPC in flight ends within its short deadline).
  ~RouterRegistration();
  RouterRegistration(const RouterRegistration&) = delete;
  RouterRegistration& operator=(const RouterRegistration&) = delete;

  // Sends the next heartbeat now (e.g. when draining starts, so the router stops sending work).
  void Poke();

 private:
  void Run();
  // One Register or Heartbeat; returns whether the router knows this worker afterwards.
  bool Contact(bool registered);
  // Logs when the router becomes unreachable or reachable again; returns `known`.
  bool Reached(const grpc::Status& status, bool known);

  const std::string router_address_;
  const ::indexcache::v1::RegisterRequest self_;
  const LoadFn load_;
  std::unique_ptr<::indexcache::v1::Registry::Stub> stub_;
  absl::Duration interval_;  // registration thread only
  bool reachable_ = true;    // registration thread only: logs each change once
  // How far the router follows this worker's cached blocks, as it last answered (registration thread).
  ::indexcache::v1::CachedBlocksCursor router_has_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool poked_ = false;     // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace indexcache
