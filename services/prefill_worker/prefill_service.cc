#include "services/prefill_worker/prefill_service.h"

#include <chrono>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/auth/grpc_token.h"
#include "common/util/logging.h"
#include "common/model/prefill_cost.h"
#include "services/common/cached_blocks_proto.h"
#include "services/common/handoff_failed.h"
#include "services/common/logprobs_proto.h"
#include "services/common/sampling_from_proto.h"
#include "services/common/status_conversion.h"

namespace indexcache {
namespace {

// How often the watchdog looks for cancelled callers and passed deadlines.
constexpr auto kWatchPeriod = std::chrono::milliseconds(20);

}  // namespace

PrefillService::PrefillService(EngineLoop& loop, const PrefillServiceOptions& options, WorkerMetrics& metrics)
    : loop_(loop), options_(options), metrics_(metrics) {
  watchdog_ = std::thread([this] { Watch(); });
}

PrefillService::~PrefillService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  watch_.notify_all();
  watchdog_.join();
}

absl::StatusOr<std::shared_ptr<PrefillService::InFlight>> PrefillService::Admit(grpc::ServerContext* context,
                                                                                const v1::PrefillRequest& request) {
  if (request.request_id().empty()) return absl::InvalidArgumentError("request_id is empty");
  if (request.handoff_address().empty()) return absl::InvalidArgumentError("handoff_address is empty");
  const int64_t tokens = request.prompt_ids_size();
  // The work this prompt adds: less the prefix the cache holds now (the router's placement counts it
  // so; reporting the whole prompt's would make this worker look busier than it is to the router).
  // Under the pattern this prompt runs (an adaptive pattern's, by length).
  ModelConfig config = loop_.engine().config();
  config.indexer_types = loop_.engine().PatternTypesFor(tokens, request.resumed_tokens());
  const int32_t cached = loop_.CachedPrefixTokens(request.prompt_ids(), tokens - request.resumed_tokens());
  const double flops = PrefillWorkOf(config, tokens).total() - PrefillWorkOf(config, cached).total();
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError(absl::StrCat("prefill worker ", worker_id_, " is draining"));
  if (in_flight_.contains(request.request_id())) {
    return absl::AlreadyExistsError(absl::StrCat("request ", request.request_id(), " is already in prefill here"));
  }
  if (options_.max_queued_prompt_tokens > 0 && !in_flight_.empty() &&
      queued_prompt_tokens_ + tokens > options_.max_queued_prompt_tokens) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "prefill worker %s is full: %d prompt tokens queued, %d more would pass the bound of %d", worker_id_,
        queued_prompt_tokens_, tokens, options_.max_queued_prompt_tokens));
  }
  auto entry = std::make_shared<InFlight>(context, tokens, flops, absl::FromChrono(context->deadline()));
  in_flight_.emplace(request.request_id(), entry);
  queued_prompt_tokens_ += tokens;
  queued_prefill_flops_ += flops;
  return entry;
}

void PrefillService::Finish(const std::string& request_id, bool handoff_rejected) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_flight_.find(request_id);
    queued_prompt_tokens_ -= it->second->prompt_tokens;
    queued_prefill_flops_ -= it->second->prefill_flops;
    if (in_flight_.size() == 1) queued_prefill_flops_ = 0;  // no rounding left behind once idle
    in_flight_.erase(it);
    if (handoff_rejected) ++handoffs_rejected_;
  }
  idle_.notify_all();
}

grpc::Status PrefillService::Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                                     grpc::ServerWriter<v1::PrefillResponse>* writer) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  absl::StatusOr<std::shared_ptr<InFlight>> entry = Admit(context, *request);
  if (!entry.ok()) {
    IC_LOG(Info) << "prefill " << request->request_id() << " refused: " << entry.status();
    return ToGrpcStatus(entry.status());
  }
  IC_LOG(Info) << "prefill " << request->request_id() << ": " << request->prompt_ids_size() << " prompt tokens → "
               << request->handoff_address() << " (" << v1::HandoffTransport_Name(request->transport()) << ")";
  PrefillJob job(loop_, options_.job, (*entry)->control);
  // The first token leaves while this thread still sends the handoff's last rows: the client's first
  // token does not wait for them (the router relays it at once).
  std::thread first_token_relay([&job, writer] {
    const std::optional<TokenEvent> first = job.AwaitFirstToken();
    if (!first.has_value()) return;
    v1::PrefillResponse message;
    v1::FirstToken* token = message.mutable_first_token();
    token->set_token_id(first->token);
    token->set_text(first->text);
    if (first->logprobs.has_value()) LogprobsToProto(*first->logprobs, *token->mutable_logprobs());
    writer->Write(message);  // a caller gone by now is seen by the job's watchdog
  });
  absl::StatusOr<v1::PrefillDone> result = job.Run(*request, SamplingParamsOf(*request));
  first_token_relay.join();
  Finish(request->request_id(), job.handoff_rejected());
  const HandoffByteCounts bytes = job.bytes();
  metrics_.AddHandoffBytes(request->transport(), bytes);
  metrics_.AddHandoffSendTime(request->transport(), job.send_time());
  if (job.handoff_rejected()) metrics_.CountHandoffFailure(request->transport(), result.status());
  if (result.ok()) {
    metrics_.ObserveHandoff(request->transport(), absl::Seconds(result->handoff_seconds()),
                            bytes.latent_bytes + bytes.index_key_bytes + bytes.metadata_bytes);
  }
  if (!result.ok()) {
    IC_LOG(Info) << "prefill " << request->request_id() << " failed: " << result.status();
    // The decode worker refused the handoff or the transfer to it broke: this worker is fine, and the
    // router blames the other one (a dead prefill worker's call breaks without this mark).
    if (job.handoff_rejected()) context->AddTrailingMetadata(std::string(kHandoffFailedMetadata), "true");
    return ToGrpcStatus(result.status());
  }
  IC_LOG(Info) << "prefill " << request->request_id() << " done: first token " << result->first_token()
               << ", prefill " << result->prefill_seconds() << " s, handoff " << result->handoff_seconds() << " s, "
               << result->handoff().latent_bytes() << " latent + " << result->handoff().index_key_bytes()
               << " index-key bytes in " << result->handoff().chunks() << " chunks, "
               << absl::ToDoubleSeconds(job.send_time()) << " s of it sending";
  v1::PrefillResponse done;
  *done.mutable_done() = *std::move(result);
  writer->Write(done);
  return grpc::Status::OK;
}

grpc::Status PrefillService::Abort(grpc::ServerContext* context, const v1::WorkerAbortRequest* request,
                                   v1::WorkerAbortResponse* response) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(request->request_id());
  response->set_found(it != in_flight_.end());
  if (it != in_flight_.end()) {
    it->second->control.Stop(absl::AbortedError(absl::StrCat("request ", request->request_id(), " was aborted")));
  }
  return grpc::Status::OK;
}

grpc::Status PrefillService::GetLoad(grpc::ServerContext* context, const v1::LoadRequest* request,
                                     v1::WorkerLoad* response) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  *response = Load();
  ReportCachedBlocks(request->cached_blocks(), response);
  return grpc::Status::OK;
}

void PrefillService::ReportCachedBlocks(const v1::CachedBlocksCursor& since, v1::WorkerLoad* load) {
  SetCachedBlocks(loop_.CachedBlocksSince(since.epoch(), since.version(), kMaxReportedCachedBlocks), load);
}

v1::WorkerLoad PrefillService::Load() {
  // Published by the loop, never waited for: a heartbeat must not queue behind a long prefill step.
  const EngineLoad engine = loop_.TakeLoad();
  metrics_.AddEngineStats(engine.stats);
  metrics_.AddPrefixCache(engine.prefix_cache, engine.prefix_cached_blocks, engine.prefix_idle_blocks);
  v1::WorkerLoad load;
  load.set_role(v1::PREFILL);
  load.set_free_kv_blocks(engine.free_kv_blocks);
  load.set_total_kv_blocks(engine.total_kv_blocks);
  load.set_kv_block_size(engine.kv_block_size);
  load.set_running_sequences(engine.requests);
  std::lock_guard<std::mutex> lock(mu_);
  load.set_worker_id(worker_id_);
  stats_ += engine.stats;
  load.set_queued_requests(static_cast<int32_t>(in_flight_.size()));
  load.set_queued_prompt_tokens(queued_prompt_tokens_);
  load.set_queued_prefill_flops(queued_prefill_flops_);
  load.set_max_queued_prompt_tokens(options_.max_queued_prompt_tokens);
  load.set_draining(draining_);
  load.set_indexer_runs(stats_.indexer_runs);
  load.set_indexer_skips(stats_.indexer_skips);
  load.set_index_key_bytes_not_stored(stats_.index_key_bytes_not_stored);
  load.set_handoffs_rejected(handoffs_rejected_);
  metrics_.SetLoad(load);
  return load;
}

void PrefillService::Ready(const std::string& worker_id, const std::string& /*address*/) {
  std::lock_guard<std::mutex> lock(mu_);
  worker_id_ = worker_id;
}

void PrefillService::StartDraining() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool PrefillService::WaitIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_until(lock, absl::ToChronoTime(deadline), [&] { return in_flight_.empty(); });
}

void PrefillService::StopAll(const absl::Status& why) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, entry] : in_flight_) entry->control.Stop(why);
}

void PrefillService::Watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    watch_.wait_for(lock, kWatchPeriod);
    const absl::Time now = absl::Now();
    for (auto& [id, entry] : in_flight_) {
      if (entry->context->IsCancelled()) {
        entry->control.Stop(absl::CancelledError(absl::StrCat("the caller cancelled prefill ", id)));
      } else if (now > entry->control.deadline()) {
        entry->control.Stop(absl::DeadlineExceededError(absl::StrCat("prefill ", id, " passed its deadline")));
      }
    }
  }
}

}  // namespace indexcache
