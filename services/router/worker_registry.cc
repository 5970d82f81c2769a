#include "services/router/worker_registry.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/auth/grpc_token.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/common/health_client.h"
#include "services/common/status_conversion.h"
#include "services/router/load_balancer.h"
#include "services/router/prompt_blocks.h"

namespace indexcache {
namespace {

const char* RoleName(v1::WorkerRole role) {
  switch (role) {
    case v1::PREFILL:
      return "prefill";
    case v1::DECODE:
      return "decode";
    default:
      return "unknown-role";
  }
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const ClusterToken& token) {
  grpc::ChannelArguments args;
  // gRPC's default reconnect backoff grows to 120 s; a worker that restarts should be reachable
  // again by the next health check.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return InternalChannel(address, token, args);
}

// GetLoad of a static worker, with its cached blocks since `cursor`.
absl::StatusOr<v1::WorkerLoad> FetchLoad(const WorkerConnection& worker, const v1::CachedBlocksCursor& cursor,
                                         absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::LoadRequest request;
  *request.mutable_cached_blocks() = cursor;
  v1::WorkerLoad load;
  const grpc::Status status = worker.role == v1::PREFILL ? worker.prefill->GetLoad(&context, request, &load)
                                                         : worker.decode->GetLoad(&context, request, &load);
  if (!status.ok()) return Annotate(FromGrpcStatus(status), "GetLoad");
  return load;
}

}  // namespace

struct WorkerRegistry::Entry {
  std::shared_ptr<WorkerConnection> connection;
  WorkerInfo info;
  absl::Time last_heartbeat;
  WorkerLedger ledger;
  CachedBlockIndex cached;  // the worker's prefix cache, as its reports tell it
};

WorkerConnection::WorkerConnection(v1::WorkerRole role_in, std::string address_in, const ClusterToken& token)
    : role(role_in),
      address(std::move(address_in)),
      channel(MakeChannel(address, token)),
      prefill(role == v1::PREFILL ? v1::PrefillWorker::NewStub(channel) : nullptr),
      decode(role == v1::DECODE ? v1::DecodeWorker::NewStub(channel) : nullptr) {}

WorkerLease::WorkerLease(WorkerRegistry* registry, std::shared_ptr<WorkerConnection> worker, std::string id,
                         const LedgerShare& share)
    : registry_(registry), worker_(std::move(worker)), id_(std::move(id)), share_(share) {}

WorkerLease::~WorkerLease() { ReleaseLoad(); }

std::string WorkerLease::Describe() const {
  return absl::StrFormat("%s worker %s (%s)", RoleName(worker_->role), id_, worker_->address);
}

void WorkerLease::ReleaseLoad() {
  if (!counted_) return;
  counted_ = false;
  registry_->ReturnLoad(worker_.get(), share_);
}

WorkerRegistry::WorkerRegistry(RegistryOptions options)
    : options_(std::move(options)), rng_(std::random_device{}()) {}

WorkerRegistry::~WorkerRegistry() = default;

void WorkerRegistry::AddStatic(v1::WorkerRole role, const std::string& address) { AddProbed(role, address, false); }

void WorkerRegistry::AddDiscovered(v1::WorkerRole role, const std::string& address) {
  AddProbed(role, address, true);
}

void WorkerRegistry::AddProbed(v1::WorkerRole role, const std::string& address, bool discovered) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_) {
    if (e->info.address != address) continue;
    if (e->info.role != role) {
      IC_LOG(Warning) << "not adding " << RoleName(role) << " worker " << address << ": the router knows it as a "
                      << RoleName(e->info.role) << " worker";
    } else if (!e->info.is_static) {
      e->info.is_static = true;  // registered: probed from now on too, as a registered static worker is
      e->info.discovered = discovered;
    }
    return;
  }
  auto entry = std::make_unique<Entry>();
  entry->connection = std::make_shared<WorkerConnection>(role, address, options_.cluster_token);
  entry->info.id = address;
  entry->info.address = address;
  entry->info.role = role;
  entry->info.is_static = true;
  entry->info.discovered = discovered;
  if (discovered) {
    IC_LOG(Info) << RoleName(role) << " worker " << address << " discovered through DNS";
  }
  entries_.push_back(std::move(entry));
}

void WorkerRegistry::RemoveDiscovered(const std::string& address, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    const WorkerInfo& info = (*it)->info;
    if (info.address != address || !info.discovered) continue;
    IC_LOG(Info) << RoleName(info.role) << " worker " << info.id << " (" << address << ") left the registry: " << why;
    entries_.erase(it);
    return;
  }
}

WorkerRegistry::PoolIdentity WorkerRegistry::PoolIdentityFor(const v1::RegisterRequest& request) const {
  PoolIdentity pool{.fingerprint = options_.model_fingerprint, .index_pattern = options_.index_pattern,
                    .length_patterns = std::nullopt};
  for (const auto& e : entries_) {
    // The worker itself (re-registering, perhaps restarted with another model) does not count.
    if (!e->info.registered || e->info.id == request.worker_id() || e->info.address == request.address()) {
      continue;
    }
    if (pool.fingerprint.empty()) pool.fingerprint = e->info.model_fingerprint;
    if (pool.index_pattern.empty()) pool.index_pattern = e->info.index_pattern;
    if (!pool.length_patterns) pool.length_patterns = e->info.length_patterns;
  }
  return pool;
}

absl::StatusOr<v1::CachedBlocksCursor> WorkerRegistry::Register(const v1::RegisterRequest& request) {
  ASSIGN_OR_RETURN(v1::CachedBlocksCursor cursor, Enroll(request));
  options_.capacity_changed();
  return cursor;
}

absl::StatusOr<v1::CachedBlocksCursor> WorkerRegistry::Enroll(const v1::RegisterRequest& request) {
  if (request.worker_id().empty() || request.address().empty()) {
    return absl::InvalidArgumentError("a worker must register with its worker_id and address");
  }
  if (request.role() != v1::PREFILL && request.role() != v1::DECODE) {
    return absl::InvalidArgumentError(
        absl::StrFormat("worker %s registered without a role (PREFILL or DECODE)", request.worker_id()));
  }
  if (request.model_fingerprint().empty() || request.index_pattern().empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "worker %s must register with its model fingerprint and index pattern", request.worker_id()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  const PoolIdentity pool = PoolIdentityFor(request);
  const std::string& fingerprint = pool.fingerprint;
  const std::string& pattern = pool.index_pattern;
  if (!fingerprint.empty() && fingerprint != request.model_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "refusing %s worker %s (%s): it serves model fingerprint %s, but this router's pool serves %s; "
        "every worker must load the same model",
        RoleName(request.role()), request.worker_id(), request.address(), request.model_fingerprint(),
        fingerprint));
  }
  if (!pattern.empty() && pattern != request.index_pattern()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "refusing %s worker %s (%s): it runs index pattern %s, but this router's pool runs %s; start every "
        "worker with the same --index-pattern / --index-freq",
        RoleName(request.role()), request.worker_id(), request.address(), request.index_pattern(), pattern));
  }
  // A prefill and a decode worker pick a request's pattern by its length alike only with equal ranges.
  if (pool.length_patterns && *pool.length_patterns != request.length_patterns()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "refusing %s worker %s (%s): its length patterns are '%s', but this router's pool runs '%s'; start "
        "every worker with the same --length-patterns",
        RoleName(request.role()), request.worker_id(), request.address(), request.length_patterns(),
        *pool.length_patterns));
  }
  Entry* entry = nullptr;
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& e = **it;
    const bool same_address = e.info.address == request.address();
    if (same_address && e.info.is_static) {
      if (e.info.role != request.role()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "worker %s registered as %s at %s, which the router's static list names as a %s worker",
            request.worker_id(), RoleName(request.role()), request.address(), RoleName(e.info.role)));
      }
      entry = &e;
      ++it;
    } else if (!e.info.is_static && (same_address || e.info.id == request.worker_id())) {
      // A registered worker coming back (restarted, maybe on another port) gets a fresh connection:
      // the old channel may sit in reconnect backoff.
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  if (entry == nullptr) {
    entries_.push_back(std::make_unique<Entry>());
    entry = entries_.back().get();
    entry->connection = std::make_shared<WorkerConnection>(request.role(), request.address(), options_.cluster_token);
    entry->info.address = request.address();
    entry->info.role = request.role();
  }
  entry->info.id = request.worker_id();
  entry->info.registered = true;
  entry->cached.Clear();  // a registration sends the whole set
  entry->info.healthy = true;
  entry->info.model_fingerprint = request.model_fingerprint();
  entry->info.index_pattern = request.index_pattern();
  entry->info.length_patterns = request.length_patterns();
  RecordLoad(*entry, request.load());
  entry->info.load.set_worker_id(request.worker_id());
  entry->last_heartbeat = absl::Now();
  IC_LOG(Info) << "registered " << RoleName(request.role()) << " worker " << request.worker_id() << " at "
               << request.address() << " (model " << request.model_fingerprint() << ", pattern "
               << request.index_pattern()
               << (request.length_patterns().empty() ? "" : ", by prompt length " + request.length_patterns()) << ")";
  return entry->cached.cursor();
}

std::optional<v1::CachedBlocksCursor> WorkerRegistry::Heartbeat(const v1::WorkerLoad& load) {
  v1::CachedBlocksCursor cursor;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(entries_.begin(), entries_.end(),
                           [&](const auto& e) { return e->info.registered && e->info.id == load.worker_id(); });
    if (it == entries_.end()) return std::nullopt;
    RecordLoad(**it, load);
    (*it)->last_heartbeat = absl::Now();
    cursor = (*it)->cached.cursor();
  }
  options_.capacity_changed();
  return cursor;
}

void WorkerRegistry::RecordLoad(Entry& entry, const v1::WorkerLoad& load) {
  if (load.has_cached_blocks()) {
    entry.cached.Apply(load.cached_blocks());
  } else {
    entry.cached.Clear();  // the worker keeps no prefix cache (any more)
  }
  entry.info.load = load;
  entry.info.load.clear_cached_blocks();  // kept in `cached`; WorkerInfo copies stay small
  entry.info.load.set_role(entry.info.role);
  entry.ledger.Reported(entry.info.load);
}

void WorkerRegistry::Evict(const std::shared_ptr<WorkerConnection>& worker, const std::string& why) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    Entry& e = **it;
    if (e.connection != worker) continue;
    if (e.info.healthy) {
      IC_LOG(Info) << RoleName(e.info.role) << " worker " << e.info.id << " (" << e.info.address
                   << ") left the pool: " << why;
    }
    if (e.info.is_static) {
      // Probes go on; a passing one brings it back. A forgotten registration makes it register again.
      e.info.healthy = false;
      e.info.registered = false;
    } else {
      entries_.erase(it);
    }
    return;
  }
}

void WorkerRegistry::Probe() {
  struct Target {
    std::shared_ptr<WorkerConnection> connection;
    bool fetch_load = false;
    v1::CachedBlocksCursor cached;
    absl::Status health;
    absl::StatusOr<v1::WorkerLoad> load;
  };
  std::vector<Target> targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : entries_) {
      targets.push_back(
          {e->connection, e->info.is_static && !e->info.registered, e->cached.cursor(), {}, v1::WorkerLoad()});
    }
  }
  // One worker after another: pools are small, and a dead worker's connection fails fast.
  for (Target& t : targets) {
    t.health = CheckHealth(t.connection->channel, options_.probe_timeout);
    if (t.health.ok() && t.fetch_load) t.load = FetchLoad(*t.connection, t.cached, options_.probe_timeout);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Target& t : targets) {
      auto it = std::find_if(entries_.begin(), entries_.end(),
                             [&](const auto& e) { return e->connection == t.connection; });
      if (it == entries_.end()) continue;  // left while being probed
      Entry& e = **it;
      const absl::Status failure = !t.health.ok() ? t.health : t.load.status();
      if (!failure.ok()) {
        Evict(t.connection, std::string(failure.message()));
        continue;
      }
      if (t.fetch_load) {
        RecordLoad(e, *t.load);
        if (!t.load->worker_id().empty()) e.info.id = t.load->worker_id();
      }
      if (!e.info.healthy) {
        e.info.healthy = true;
        IC_LOG(Info) << RoleName(e.info.role) << " worker " << e.info.id << " (" << e.info.address
                     << ") joined the pool";
      }
    }
    const absl::Time now = absl::Now();
    std::vector<std::shared_ptr<WorkerConnection>> silent;
    for (const auto& e : entries_) {
      if (e->info.registered && now - e->last_heartbeat > options_.heartbeat_timeout) {
        silent.push_back(e->connection);
      }
    }
    for (const auto& connection : silent) {
      Evict(connection, absl::StrCat("no heartbeat for more than ", absl::FormatDuration(options_.heartbeat_timeout)));
    }
  }
  options_.capacity_changed();
}

absl::StatusOr<Placement> WorkerRegistry::TryPlace(const Demand& demand, absl::Span<const std::string> exclude_decode,
                                                   absl::Span<const std::string> exclude_prefill) {
  // One role's choice: the worker picked among those with room, or why there is none.
  struct Choice {
    Entry* chosen = nullptr;
    Pick pick;
    int64_t cached_tokens = 0;
    absl::Status error;
    std::string busy;
  };
  auto choose = [&](v1::WorkerRole role, absl::Span<const std::string> exclude) {
    std::vector<Entry*> entries;
    std::vector<Candidate> candidates;
    std::vector<std::string> later, never;
    for (const auto& e : entries_) {
      const WorkerInfo& info = e->info;
      if (info.role != role || !info.healthy || info.load.draining()) continue;
      if (std::find(exclude.begin(), exclude.end(), info.id) != exclude.end()) continue;
      const FitVerdict verdict =
          role == v1::DECODE ? DecodeFit(info.load, e->ledger, demand) : PrefillFit(info.load, e->ledger, demand);
      const std::string why = absl::StrFormat("%s worker %s: %s", RoleName(role), info.id, verdict.why);
      if (verdict.fit == Fit::kNever) {
        never.push_back(why);
      } else if (verdict.fit == Fit::kLater) {
        later.push_back(why);
      } else {
        entries.push_back(e.get());
        candidates.push_back(role == v1::DECODE ? DecodeCandidate(*e, demand) : PrefillCandidate(*e, demand));
      }
    }
    Choice choice;
    if (!candidates.empty()) {
      choice.pick = PickWorker(candidates, rng_);
      choice.chosen = entries[choice.pick.index];
      choice.cached_tokens = candidates[choice.pick.index].cached_tokens;
    } else if (!later.empty()) {
      choice.busy = absl::StrJoin(later, "; ");
    } else if (!never.empty()) {
      choice.error = absl::ResourceExhaustedError(absl::StrCat(
          "the request can never fit: ", absl::StrJoin(never, "; "), " (prompt ", demand.prompt_tokens,
          " tokens, max_new_tokens ", demand.max_new_tokens, ")"));
    } else {
      choice.error = absl::UnavailableError(absl::StrFormat("no %s worker is in the pool%s", RoleName(role),
                                                            exclude.empty() ? "" : " besides the one that failed"));
    }
    return choice;
  };
  // The prompt's keys under every naming the pool's caches use, hashed before the lock (about 1 ms per
  // 32K tokens, which heartbeats and other placements must not wait for). A worker that registers in
  // between counts as holding none of the prompt this time.
  if (demand.prompt != nullptr && options_.prefix_overlap_weight > 0) {
    for (const auto& [seed, block_size] : CacheNamings(demand.PatternLength())) demand.prompt->KeysFor(seed, block_size);
  }
  std::lock_guard<std::mutex> lock(mu_);
  const Choice decode = choose(v1::DECODE, exclude_decode);
  RETURN_IF_ERROR(decode.error);
  const Choice prefill = choose(v1::PREFILL, exclude_prefill);
  RETURN_IF_ERROR(prefill.error);
  Placement placement;
  if (decode.chosen == nullptr || prefill.chosen == nullptr) {
    placement.busy = decode.chosen == nullptr ? decode.busy : prefill.busy;
    return placement;
  }
  const LedgerShare decode_share{.kv_blocks = KvBlocksToAdmit(decode.chosen->info.load, demand), .sequences = 1};
  // The work the prefill worker will do: the prompt's, less the prefix its cache holds.
  const int64_t prefill_flops =
      demand.prompt != nullptr && demand.prompt->models_work()
          ? demand.prefill_flops - demand.prompt->WorkOf(prefill.cached_tokens)
          : demand.prefill_flops;
  const LedgerShare prefill_share{.prompt_tokens = demand.prompt_tokens, .prefill_flops = prefill_flops};
  decode.chosen->ledger.Enter(decode_share);
  prefill.chosen->ledger.Enter(prefill_share);
  placement.decode =
      std::make_unique<WorkerLease>(this, decode.chosen->connection, decode.chosen->info.id, decode_share);
  placement.prefill =
      std::make_unique<WorkerLease>(this, prefill.chosen->connection, prefill.chosen->info.id, prefill_share);
  placement.decode_basis = decode.pick.basis;
  placement.prefill_basis = prefill.pick.basis;
  placement.decode_cached_tokens = decode.cached_tokens;
  placement.prefill_cached_tokens = prefill.cached_tokens;
  return placement;
}

int64_t WorkerRegistry::CachedPromptTokens(const Entry& entry, const Demand& demand) const {
  if (demand.prompt == nullptr || options_.prefix_overlap_weight <= 0 || !entry.cached.known()) return 0;
  const int32_t block_size = entry.cached.block_size();
  const std::vector<uint64_t>* keys = demand.prompt->HashedFor(entry.cached.SeedFor(demand.PatternLength()), block_size);
  return keys == nullptr ? 0 : entry.cached.LeadingHits(*keys) * block_size;
}

std::vector<std::pair<BlockKey, int32_t>> WorkerRegistry::CacheNamings(int64_t prompt_tokens) const {
  std::vector<std::pair<BlockKey, int32_t>> namings;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_) {
    if (!e->cached.known()) continue;
    std::pair<BlockKey, int32_t> naming{e->cached.SeedFor(prompt_tokens), e->cached.block_size()};
    if (std::find(namings.begin(), namings.end(), naming) == namings.end()) namings.push_back(naming);
  }
  return namings;
}

Candidate WorkerRegistry::PrefillCandidate(const Entry& entry, const Demand& demand) const {
  Candidate c{.load = PrefillLoadKey(entry.ledger), .cached_tokens = CachedPromptTokens(entry, demand)};
  const double weight = options_.prefix_overlap_weight;
  if (demand.prompt != nullptr && demand.prompt->models_work()) {
    // In FLOPs: the work queued there, then this prompt's, less what the cached prefix saves.
    c.cost = static_cast<double>(c.load.primary) + static_cast<double>(demand.prefill_flops) -
             weight * static_cast<double>(demand.prompt->WorkOf(c.cached_tokens));
  } else {
    // A router without the model counts prompt tokens instead.
    c.cost = static_cast<double>(c.load.secondary + demand.prompt_tokens) - weight * static_cast<double>(c.cached_tokens);
  }
  return c;
}

Candidate WorkerRegistry::DecodeCandidate(const Entry& entry, const Demand& demand) const {
  Candidate c{.load = DecodeLoadKey(entry.info.load, entry.ledger), .cached_tokens = CachedPromptTokens(entry, demand)};
  // In KV blocks: those in use there (all but the free ones, which the load key's second part counts
  // negatively), then this request's, less those its cached prefix already holds.
  const int32_t block_size = std::max(entry.info.load.kv_block_size(), 1);
  const int64_t in_use = int64_t{entry.info.load.total_kv_blocks()} + c.load.secondary;
  c.cost = static_cast<double>(in_use + KvBlocksToAdmit(entry.info.load, demand)) -
           options_.prefix_overlap_weight * static_cast<double>(c.cached_tokens / block_size);
  return c;
}

void WorkerRegistry::MarkFull(const WorkerLease& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& e : entries_) {
    if (e->connection == worker.connection()) e->ledger.refused = true;
  }
}

void WorkerRegistry::ReturnLoad(const WorkerConnection* worker, const LedgerShare& share) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : entries_) {
      if (e->connection.get() != worker) continue;
      e->ledger.Leave(share);
      break;
    }
  }
  options_.capacity_changed();
}

void WorkerRegistry::CheckAfterFailure(const WorkerLease& worker, const absl::Status& why) {
  const absl::Status health = CheckHealth(worker.connection()->channel, options_.probe_timeout);
  if (health.ok()) return;
  std::lock_guard<std::mutex> lock(mu_);
  Evict(worker.connection(), absl::StrCat(why.message(), "; then ", health.message()));
}

std::vector<WorkerInfo> WorkerRegistry::Workers() const {
  std::vector<WorkerInfo> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : entries_) workers.push_back(e->info);
  }
  std::sort(workers.begin(), workers.end(), [](const WorkerInfo& a, const WorkerInfo& b) {
    return std::tie(a.role, a.address) < std::tie(b.role, b.address);
  });
  return workers;
}

std::vector<WorkerInfo> WorkerRegistry::Pool() const {
  std::vector<WorkerInfo> pool = Workers();
  std::erase_if(pool, [](const WorkerInfo& w) { return !w.healthy || w.load.draining(); });
  return pool;
}

std::string WorkerRegistry::PoolFingerprint() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PoolIdentityFor(v1::RegisterRequest()).fingerprint;
}

std::string WorkerRegistry::PoolIndexPattern() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PoolIdentityFor(v1::RegisterRequest()).index_pattern;
}

std::string WorkerRegistry::PoolLengthPatterns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return PoolIdentityFor(v1::RegisterRequest()).length_patterns.value_or("");
}

std::string WorkerRegistry::IndexPatternOf(const std::string& worker_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : entries_) {
    if (e->info.id == worker_id) return e->info.index_pattern;
  }
  return "";
}

}  // namespace indexcache
