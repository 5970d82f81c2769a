#include "services/decode_worker/decode_service.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/auth/grpc_token.h"
#include "common/model/model_config.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/common/cached_blocks_proto.h"
#include "services/common/logprobs_proto.h"
#include "services/common/sampling_from_proto.h"
#include "services/common/status_conversion.h"

namespace indexcache {
namespace {

// How often a waiting Decode call looks at its caller (cancel, deadline) and the handoff timeout.
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

v1::FinishReason ToProto(RequestFinish finish) {
  switch (finish) {
    case RequestFinish::kStop:
      return v1::STOP;
    case RequestFinish::kLength:
      return v1::LENGTH;
    case RequestFinish::kAbort:
      return v1::ABORT;
    case RequestFinish::kError:
    case RequestFinish::kNone:
    case RequestFinish::kPrefillDone:
      break;
  }
  return v1::ERROR;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// Cache rows of `session` received so far, over every layer and kind.
int64_t RowsReceived(DecodeSession& session) {
  std::lock_guard<std::mutex> lock(session.import_mu);
  int64_t rows = 0;
  for (int32_t n : session.import.latent_rows) rows += n;
  for (int32_t n : session.import.index_key_rows) rows += n;
  return rows;
}

// Why a call's context was cancelled: its deadline passed, or the caller went away.
absl::Status CancelReason(grpc::ServerContext* context, absl::string_view what) {
  if (absl::FromChrono(context->deadline()) <= absl::Now()) {
    return absl::DeadlineExceededError(absl::StrCat("the deadline passed ", what));
  }
  return absl::CancelledError(absl::StrCat("the caller cancelled ", what));
}

}  // namespace

class DecodeService::InFlight {
 public:
  explicit InFlight(DecodeService& service) : service_(service) {
    std::lock_guard<std::mutex> lock(service_.mu_);
    ++service_.in_flight_;
  }
  ~InFlight() {
    {
      std::lock_guard<std::mutex> lock(service_.mu_);
      --service_.in_flight_;
    }
    service_.idle_.notify_all();
  }

 private:
  DecodeService& service_;
};

DecodeService::DecodeService(EngineLoop& loop, HandoffImporter& importer, const DecodeServiceOptions& options,
                             WorkerMetrics& metrics)
    : loop_(loop),
      importer_(importer),
      options_(options),
      metrics_(metrics),
      patterns_(loop.engine().patterns().Named()) {}

absl::StatusOr<std::pair<RequestId, int32_t>> DecodeService::Admit(const v1::DecodeRequest& request,
                                                                   const SamplingParams& params) {
  std::vector<int32_t> prompt(request.prompt_ids().begin(), request.prompt_ids().end());
  absl::StatusOr<std::pair<RequestId, int32_t>> id =
      loop_.Call([&](Engine& engine) -> absl::StatusOr<std::pair<RequestId, int32_t>> {
        ASSIGN_OR_RETURN(const RequestId admitted, engine.AdmitImport(std::move(prompt), params));
        ASSIGN_OR_RETURN(const int32_t cached, engine.CachedTokens(admitted));
        return std::make_pair(admitted, cached);
      });
  // Short of blocks now, or never enough (the engine's message says which): RESOURCE_EXHAUSTED at
  // once. Waiting is the router's: it holds the request in its queue until a worker has room.
  if (absl::IsResourceExhausted(id.status())) return Annotate(id.status(), absl::StrCat("decode worker ", worker_id_));
  return id;
}

grpc::Status DecodeService::Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                                   grpc::ServerWriter<v1::DecodeResponse>* writer) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  const absl::Time arrived = absl::Now();
  InFlight in_flight(*this);
  if (!ready_.load(std::memory_order_acquire)) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the decode worker is starting");
  }
  if (draining_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat("decode worker ", worker_id_, " is draining"));
  }
  const std::string& id = request->request_id();
  if (id.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a Decode request needs a request_id");
  std::string handoff_address;
  switch (request->transport()) {
    case v1::HANDOFF_TRANSPORT_GRPC:
      handoff_address = grpc_handoff_address_;
      break;
    case v1::HANDOFF_TRANSPORT_TCP:
      if (options_.tcp_handoff_address.empty()) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this decode worker runs no TCP data plane");
      }
      handoff_address = options_.tcp_handoff_address;
      break;
    case v1::HANDOFF_TRANSPORT_NCCL:
      if (options_.nccl_handoff_address.empty()) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "this decode worker runs no NCCL handoff (start it with --nccl-gpu N)");
      }
      handoff_address = options_.nccl_handoff_address;
      break;
    default:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown handoff transport");
  }
  if (importer_.Find(id) != nullptr) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, absl::StrCat("request '", id, "' is already decoding here"));
  }
  absl::StatusOr<std::pair<RequestId, int32_t>> admission = Admit(*request, SamplingParamsOf(*request));
  if (!admission.ok()) return ToGrpcStatus(admission.status());
  const auto [engine_id, cached_tokens] = *admission;
  auto session =
      std::make_shared<DecodeSession>(id, engine_id, request->prompt_ids_size(), cached_tokens,
                                      loop_.engine().PatternFor(request->prompt_ids_size(), request->resumed_tokens()),
                                      absl::Now());
  if (absl::Status added = importer_.Add(session); !added.ok()) {
    loop_.Call([&, engine_id = engine_id](Engine& engine) { engine.Release(engine_id); });
    return ToGrpcStatus(added);
  }
  IC_LOG(Info) << "request '" << id << "' admitted: " << request->prompt_ids_size() << " prompt tokens ("
               << cached_tokens << " in the prefix cache), handoff via "
               << v1::HandoffTransport_Name(request->transport()) << " at " << handoff_address;
  v1::DecodeResponse admitted;
  admitted.mutable_admitted()->set_handoff_address(handoff_address);
  admitted.mutable_admitted()->set_reserved_blocks(loop_.engine().cache().BlocksFor(request->prompt_ids_size() + 1));
  admitted.mutable_admitted()->set_cached_prompt_tokens(cached_tokens);
  grpc::Status status;
  if (writer->Write(admitted)) {
    status = Stream(context, *session, arrived, absl::Milliseconds(request->progress_interval_ms()),
                    request->first_token_from_prefill(), writer);
  } else {
    session->Fail(loop_, absl::CancelledError("the Decode caller went away"));
    status = grpc::Status(grpc::StatusCode::CANCELLED, "the Decode caller went away");
  }
  importer_.Remove(id);
  return status;
}

grpc::Status DecodeService::Stream(grpc::ServerContext* context, DecodeSession& session, absl::Time arrived,
                                   absl::Duration progress_interval, bool first_token_from_prefill,
                                   grpc::ServerWriter<v1::DecodeResponse>* writer) {
  int32_t generated = 0;
  absl::Time first_token_at, last_token_at, first_sent_at;
  absl::Time progress_sent_at = absl::Now();
  bool started = false;
  for (;;) {
    if (!started && progress_interval > absl::ZeroDuration() && absl::Now() - progress_sent_at >= progress_interval) {
      v1::DecodeResponse progress;
      progress.mutable_progress()->set_rows_received(RowsReceived(session));
      progress_sent_at = absl::Now();
      if (!writer->Write(progress)) {
        session.Fail(loop_, absl::CancelledError("the Decode caller went away"));
        return grpc::Status(grpc::StatusCode::CANCELLED, "the Decode caller went away");
      }
    }
    DecodeSession::Output out = session.Take(kPollInterval);
    v1::DecodeResponse message;
    const TokenEvent* finish = nullptr;
    for (const TokenEvent& event : out.events) {
      started = true;
      // The caller has the first token (its text, its logprobs) from the prefill worker already.
      const bool sent_by_prefill = first_token_from_prefill && generated == 0 && event.token >= 0;
      if (event.token >= 0) {
        if (!sent_by_prefill) {
          message.add_token_ids(event.token);
          if (event.logprobs.has_value()) LogprobsToProto(*event.logprobs, *message.add_logprobs());
        }
        last_token_at = absl::Now();
        if (generated++ == 0) first_token_at = last_token_at;
      }
      if (!sent_by_prefill) message.mutable_text()->append(event.text);
      if (event.finish != RequestFinish::kNone) {
        finish = &event;
        break;
      }
    }
    if (finish != nullptr && finish->finish == RequestFinish::kAbort && !out.failure.ok()) {
      // The engine's ABORT of a request this worker failed (StopAll after the drain grace, a broken
      // handoff): the call ends with the failure below, never with a final message that reads as an
      // end the client asked for (the router would pass on a stream cut short as complete).
      finish = nullptr;
    }
    if (finish != nullptr) {
      session.Finished();
      absl::Time decode_started_at;
      {
        std::lock_guard<std::mutex> lock(session.import_mu);
        decode_started_at = session.import.decode_started_at;
      }
      const absl::Time now = absl::Now();
      v1::FinalInfo* final = message.mutable_final();
      final->set_finish_reason(ToProto(finish->finish));
      if (finish->finish == RequestFinish::kError) final->set_error(finish->error.ToString());
      final->set_prompt_tokens(session.prompt_tokens());
      final->set_generated_tokens(generated);
      v1::Timings* timings = final->mutable_timings();
      timings->set_queue_seconds(Seconds(session.admitted_at() - arrived));
      if (decode_started_at != absl::Time()) {
        timings->set_handoff_seconds(Seconds(decode_started_at - session.admitted_at()));
      }
      if (first_sent_at == absl::Time() && generated > 0) first_sent_at = now;  // sent with this message
      if (generated > 0) timings->set_first_token_seconds(Seconds(first_sent_at - arrived));
      timings->set_total_seconds(Seconds(now - arrived));
      if (generated > 1) {
        timings->set_mean_inter_token_seconds(Seconds(last_token_at - first_token_at) / (generated - 1));
      }
      final->set_index_pattern(patterns_[session.pattern()].second);
      final->set_decode_worker(worker_id_);
      writer->Write(message);
      IC_LOG(Info) << "request '" << session.request_id() << "' finished: " << RequestFinishName(finish->finish)
                   << ", " << generated << " tokens";
      return grpc::Status::OK;
    }
    if (message.token_ids_size() > 0 || !message.text().empty()) {
      if (!writer->Write(message)) {
        session.Fail(loop_, absl::CancelledError("the Decode caller went away"));
        return grpc::Status(grpc::StatusCode::CANCELLED, "the Decode caller went away");
      }
      if (first_sent_at == absl::Time()) first_sent_at = absl::Now();
    }
    if (!out.failure.ok()) {
      IC_LOG(Info) << "request '" << session.request_id() << "' failed: " << out.failure;
      return ToGrpcStatus(out.failure);
    }
    if (context->IsCancelled()) {
      const absl::Status why = CancelReason(context, "the Decode call");
      session.Fail(loop_, why);
      IC_LOG(Info) << "request '" << session.request_id() << "' ended: " << why;
      return ToGrpcStatus(why);
    }
    if (!started && absl::Now() - session.admitted_at() > options_.handoff_timeout) {
      const absl::Status why = absl::DeadlineExceededError(absl::StrCat(
          "no complete handoff arrived within ", absl::FormatDuration(options_.handoff_timeout), " of admission"));
      session.Fail(loop_, why);
      return ToGrpcStatus(why);
    }
  }
}

grpc::Status DecodeService::Abort(grpc::ServerContext* context, const v1::WorkerAbortRequest* request,
                                  v1::WorkerAbortResponse* response) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  std::shared_ptr<DecodeSession> session = importer_.Find(request->request_id());
  response->set_found(session != nullptr);
  if (session != nullptr) {
    IC_LOG(Info) << "request '" << request->request_id() << "' aborted";
    session->Abort(loop_);
  }
  return grpc::Status::OK;
}

grpc::Status DecodeService::GetLoad(grpc::ServerContext* context, const v1::LoadRequest* request,
                                    v1::WorkerLoad* response) {
  if (grpc::Status auth = CheckCallToken(*context, options_.cluster_token); !auth.ok()) return auth;
  *response = Load();
  ReportCachedBlocks(request->cached_blocks(), response);
  return grpc::Status::OK;
}

void DecodeService::ReportCachedBlocks(const v1::CachedBlocksCursor& since, v1::WorkerLoad* load) {
  SetCachedBlocks(loop_.CachedBlocksSince(since.epoch(), since.version(), kMaxReportedCachedBlocks), load);
}

v1::WorkerLoad DecodeService::Load() {
  // Published by the loop, never waited for: a heartbeat must not queue behind a long step.
  const EngineLoad snapshot = loop_.TakeLoad();
  metrics_.AddEngineStats(snapshot.stats);
  metrics_.AddPrefixCache(snapshot.prefix_cache, snapshot.prefix_cached_blocks, snapshot.prefix_idle_blocks);
  v1::WorkerLoad load;
  if (ready_.load(std::memory_order_acquire)) load.set_worker_id(worker_id_);
  load.set_role(v1::DECODE);
  load.set_running_sequences(static_cast<int32_t>(importer_.size()));
  load.set_free_kv_blocks(snapshot.free_kv_blocks);
  load.set_total_kv_blocks(snapshot.total_kv_blocks);
  load.set_kv_block_size(snapshot.kv_block_size);
  load.set_draining(draining_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_ += snapshot.stats;
    load.set_indexer_runs(stats_.indexer_runs);
    load.set_indexer_skips(stats_.indexer_skips);
    load.set_index_key_bytes_not_stored(stats_.index_key_bytes_not_stored);
  }
  load.set_handoffs_rejected(importer_.rejected());
  metrics_.SetLoad(load);
  return load;
}

void DecodeService::Ready(const std::string& worker_id, const std::string& grpc_address) {
  worker_id_ = worker_id;
  grpc_handoff_address_ = grpc_address;
  ready_.store(true, std::memory_order_release);
}

void DecodeService::StartDraining() { draining_ = true; }

bool DecodeService::WaitIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_until(lock, absl::ToChronoTime(deadline), [&] { return in_flight_ == 0; });
}

void DecodeService::StopAll(const absl::Status& why) {
  for (const std::shared_ptr<DecodeSession>& session : importer_.All()) session->Fail(loop_, why);
}

}  // namespace indexcache
