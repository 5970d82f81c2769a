// The pool of prefill and decode workers the router dispatches to.
//
// Workers enter in two ways: a static list of addresses (from flags), probed every health-check
// interval with grpc.health.v1 Check and GetLoad, and workers that call Registry.Register and then
// Heartbeat with their load. A worker is in rotation while it is healthy and not draining. It leaves
// the pool when a health check fails, when a registered worker misses heartbeats for the timeout, or
// when a request's call to it fails and a health check confirms it is gone. A static worker comes back
// when its health checks pass again; a registered one when it registers again (a heartbeat from a
// forgotten worker answers known=false, which tells it to).
//
// Every registered worker must serve the pool's model (fingerprint) and IndexCache pattern, because a
// decode worker can only import a prefill worker's cache of the same model and pattern. The pool's
// identity is fixed by the router's options where given, else taken from the registered workers.
// Static workers report no identity (GetLoad carries none) and are trusted as configured.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/auth/cluster_token.h"
#include "grpcpp/channel.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "services/router/cached_block_index.h"
#include "services/router/load_balancer.h"
#include "services/router/worker_capacity.h"

namespace indexcache {

namespace v1 = ::indexcache::v1;

// A worker's connection. Shared with the requests using it, so a worker leaving the pool does not
// pull its stubs from under a call in progress.
struct WorkerConnection {
  // Every call on the channel carries `token` (the workers refuse calls without it).
  WorkerConnection(v1::WorkerRole role, std::string address, const ClusterToken& token);

  const v1::WorkerRole role;
  const std::string address;
  const std::shared_ptr<grpc::Channel> channel;
  const std::unique_ptr<v1::PrefillWorker::Stub> prefill;  // role PREFILL, else null
  const std::unique_ptr<v1::DecodeWorker::Stub> decode;    // role DECODE, else null
};

// What the registry knows of one worker (a copy).
struct WorkerInfo {
  std::string id;       // the worker's own id; a static worker's address until it reports one
  std::string address;
  v1::WorkerRole role = v1::WORKER_ROLE_UNSPECIFIED;
  bool is_static = false;  // probed rather than heartbeating: from the static list or from DNS
  bool discovered = false;  // found through DNS (dns_discovery.h), and forgotten when DNS drops it
  bool registered = false;
  bool healthy = false;
  v1::WorkerLoad load;  // the last reported load
  std::string model_fingerprint;  // registered workers only
  std::string index_pattern;      // registered workers only
  std::string length_patterns;    // registered workers only: an adaptive pattern's ranges (pattern_schedule.h)
};

class WorkerRegistry;

// A worker chosen for one request. While it lives, the request counts in the worker's ledger
// (worker_capacity.h): one running sequence and the KV blocks its admission reserves on a decode
// worker, the prompt's tokens on a prefill worker.
class WorkerLease {
 public:
  WorkerLease(WorkerRegistry* registry, std::shared_ptr<WorkerConnection> worker, std::string id,
              const LedgerShare& share);
  ~WorkerLease();
  WorkerLease(const WorkerLease&) = delete;
  WorkerLease& operator=(const WorkerLease&) = delete;

  const std::string& id() const { return id_; }
  const WorkerConnection& worker() const { return *worker_; }
  const std::shared_ptr<WorkerConnection>& connection() const { return worker_; }
  // "decode worker d0 (127.0.0.1:4001)", for messages.
  std::string Describe() const;
  // Leaves the worker's ledger (a prefill worker, once its prefill returned).
  void ReleaseLoad();

 private:
  WorkerRegistry* const registry_;
  const std::shared_ptr<WorkerConnection> worker_;
  const std::string id_;
  const LedgerShare share_;
  bool counted_ = true;
};

// A decode and a prefill worker with room for one request, or (both null) why none has room now.
struct Placement {
  std::unique_ptr<WorkerLease> decode;
  std::unique_ptr<WorkerLease> prefill;
  std::string busy;
  bool placed() const { return decode != nullptr; }
  // Why each worker was chosen, and how much of the prompt its prefix cache held (router metrics).
  RoutingBasis decode_basis = RoutingBasis::kLoad;
  RoutingBasis prefill_basis = RoutingBasis::kLoad;
  int64_t decode_cached_tokens = 0;
  int64_t prefill_cached_tokens = 0;
};

struct RegistryOptions {
  std::string model_fingerprint;  // the pool's model; empty: taken from the registered workers
  std::string index_pattern;      // the pool's pattern; empty: taken from the registered workers
  ClusterToken cluster_token;     // carried by every call to a worker
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  absl::Duration probe_timeout = absl::Seconds(1);
  // How much a worker's cached prefix counts against its load in placement (load_balancer.h's
  // PickWorker): 1 weighs the work it saves like queued work; 0 ignores the prefix caches.
  double prefix_overlap_weight = 1.0;
  // Called (without the registry's lock) whenever a worker may have room it lacked: a load report, a
  // request leaving a worker's ledger, a worker joining the pool. The admission queue's wake-up.
  std::function<void()> capacity_changed = [] {};
};

class WorkerRegistry {
 public:
  explicit WorkerRegistry(RegistryOptions options);
  ~WorkerRegistry();

  // A worker from the static list; it joins the rotation after its first passing probe.
  void AddStatic(v1::WorkerRole role, const std::string& address);
  // A worker whose address DNS named (dns_discovery.h): probed like a static one. An address the
  // registry knows already is not added twice: a registered worker there becomes probed too, a static
  // one stays as it is (and DNS never removes it).
  void AddDiscovered(v1::WorkerRole role, const std::string& address);
  // DNS no longer names `address`: a discovered worker there leaves the registry. Requests in flight
  // keep their connection (WorkerLease) and end as they would had the worker died.
  void RemoveDiscovered(const std::string& address, const std::string& why);

  // A worker announcing itself; returns how far the router now follows its cached blocks.
  // FAILED_PRECONDITION when its model fingerprint or index pattern differs from the pool's;
  // INVALID_ARGUMENT for a malformed request.
  absl::StatusOr<v1::CachedBlocksCursor> Register(const v1::RegisterRequest& request);
  // Records a registered worker's load and returns how far the router now follows its cached blocks;
  // nullopt when the worker is not (or no longer) registered.
  std::optional<v1::CachedBlocksCursor> Heartbeat(const v1::WorkerLoad& load);

  // One round of upkeep: health-checks every worker (static ones also report their load through
  // GetLoad) and drops registered workers whose last heartbeat is older than the timeout.
  void Probe();

  // A decode and a prefill worker for `demand`, each chosen among the workers with room for it now
  // (worker_capacity.h) by load and by how much of the prompt their prefix caches hold (PickWorker),
  // skipping the ids in `exclude_*`; both leases are taken together. Not placed (Placement::busy says why) when every worker that could take the
  // request is full now. UNAVAILABLE when no worker of a role is in rotation; RESOURCE_EXHAUSTED when
  // the request fits no worker of a role even idle.
  absl::StatusOr<Placement> TryPlace(const Demand& demand, absl::Span<const std::string> exclude_decode,
                                     absl::Span<const std::string> exclude_prefill);
  // `worker` answered RESOURCE_EXHAUSTED: it gets no request until its next load report.
  void MarkFull(const WorkerLease& worker);
  // A call to `worker` failed with `why`: health-checks it now and takes it out of the pool when the
  // check fails too (a live worker that refused one request stays).
  void CheckAfterFailure(const WorkerLease& worker, const absl::Status& why);

  // Workers in rotation, in a stable order (role, then address).
  std::vector<WorkerInfo> Pool() const;
  // Every known worker, in or out of rotation.
  std::vector<WorkerInfo> Workers() const;
  // The model fingerprint and IndexCache pattern the pool holds workers to ("" while unknown), the
  // ranges of its adaptive pattern ("" when it has none or no worker registered yet), and the pattern
  // one worker registered with.
  std::string PoolFingerprint() const;
  std::string PoolIndexPattern() const;
  std::string PoolLengthPatterns() const;
  std::string IndexPatternOf(const std::string& worker_id) const;

 private:
  friend class WorkerLease;
  struct Entry;

  // The fingerprint and pattern the pool holds `request`'s worker to: the options' values, else those
  // of any other registered worker ("" when there is none), and that worker's length patterns (known
  // only from a registered worker). Locked.
  struct PoolIdentity {
    std::string fingerprint;
    std::string index_pattern;
    std::optional<std::string> length_patterns;
  };
  PoolIdentity PoolIdentityFor(const v1::RegisterRequest& request) const;
  // Register, under the lock.
  absl::StatusOr<v1::CachedBlocksCursor> Enroll(const v1::RegisterRequest& request);
  // AddStatic and AddDiscovered: a new probed entry unless `address` is known.
  void AddProbed(v1::WorkerRole role, const std::string& address, bool discovered);
  // Takes an entry out of rotation (static) or forgets it (registered only). Locked.
  void Evict(const std::shared_ptr<WorkerConnection>& worker, const std::string& why);
  void ReturnLoad(const WorkerConnection* worker, const LedgerShare& share);
  // Stores a report of `entry`'s load. Locked.
  void RecordLoad(Entry& entry, const v1::WorkerLoad& load);
  // How `entry` would serve `demand`, for PickWorker; and the prompt tokens its prefix cache holds
  // (0 without a prompt, with the overlap weight off, or when it reports no cache). Locked.
  Candidate PrefillCandidate(const Entry& entry, const Demand& demand) const;
  Candidate DecodeCandidate(const Entry& entry, const Demand& demand) const;
  int64_t CachedPromptTokens(const Entry& entry, const Demand& demand) const;
  // The distinct (seed, block size) pairs the workers' prefix caches name a prompt of `prompt_tokens`
  // tokens' blocks by (an adaptive pattern's seed depends on the length). Takes the lock.
  std::vector<std::pair<BlockKey, int32_t>> CacheNamings(int64_t prompt_tokens) const;

  const RegistryOptions options_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_;
  std::mt19937_64 rng_;
};

}  // namespace indexcache
