#include "services/router/generate_call.h"

#include <functional>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/pattern_schedule.h"
#include "common/model/prefill_cost.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/common/sampling_from_proto.h"
#include "services/common/status_conversion.h"
#include "services/router/prompt_blocks.h"

namespace indexcache {
namespace {

// A worker call registered with its request for as long as it runs, so that Abort(request_id) can
// cancel it.
class AttachedCall {
 public:
  AttachedCall(RequestHandle& request, grpc::ClientContext* call)
      : request_(request), call_(call), attached_(request.Attach(call)) {}
  ~AttachedCall() {
    if (attached_) request_.Detach(call_);
  }
  AttachedCall(const AttachedCall&) = delete;
  AttachedCall& operator=(const AttachedCall&) = delete;
  bool attached() const { return attached_; }

 private:
  RequestHandle& request_;
  grpc::ClientContext* const call_;
  const bool attached_;
};

// A worker's verdict that another worker would give too: the request itself is at fault.
bool Retryable(absl::StatusCode code) {
  return code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kOutOfRange;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

GenerateCall::GenerateCall(WorkerRegistry* registry, AdmissionQueue& queue, const DispatchOptions& options,
                           RouterMetrics& metrics, std::shared_ptr<RequestHandle> request, int choice,
                           grpc::ServerContext* server_context,
                           grpc::ServerWriterInterface<v1::GenerateResponse>* writer,
                           const v1::GenerateRequest& client_request,
                           std::vector<int32_t> prompt, absl::Time arrival, absl::Time deadline)
    : registry_(registry),
      queue_(queue),
      options_(options),
      metrics_(metrics),
      request_(std::move(request)),
      choice_(choice),
      server_context_(server_context),
      writer_(writer),
      client_request_(client_request),
      prompt_(std::move(prompt)),
      arrival_(arrival),
      deadline_(deadline) {}

grpc::Status GenerateCall::Run() {
  std::vector<std::string> failed_decode;
  std::vector<std::string> failed_prefill;
  absl::Status first_failure;  // before any token: why the request is retried
  absl::Status moving;         // after tokens: the failures the stream migrated away from, in order
  const char* migration_reason = nullptr;  // counted once the stream has a new pair
  max_new_tokens_ = SamplingParamsFromProto(client_request_.sampling()).max_new_tokens;
  const AdmissionQueue::Ticket ticket = queue_.NewTicket();
  // Every dispatch is a fresh request on the workers: a failed or refused one's id may still be held.
  for (int dispatch = 0;; ++dispatch) {
    const bool retry = !first_failure.ok();
    // After a failure, the failure explains why no other worker is good enough.
    auto explain = [&](const absl::Status& status) {
      if (!moving.ok()) {
        return Annotate(status, absl::StrFormat("%s after %d tokens had been streamed; migrating the stream",
                                                moving.message(), streamed_.size()));
      }
      return retry ? Annotate(status, absl::StrCat(first_failure.message(), "; no retry possible")) : status;
    };
    const int32_t streamed = static_cast<int32_t>(streamed_.size());
    const int64_t prompt_tokens = static_cast<int64_t>(prompt_.size()) + streamed;
    // What the workers will prefill: the prompt, and after a migration the tokens streamed so far.
    std::vector<int32_t> dispatched = prompt_;
    dispatched.insert(dispatched.end(), streamed_.begin(), streamed_.end());
    PromptBlocks blocks(dispatched, WorkModel());
    const int64_t prefill_flops = blocks.models_work() ? blocks.WorkOf(prompt_tokens) : 0;
    const Demand demand{prompt_tokens, max_new_tokens_ - streamed, prefill_flops, &blocks,
                        static_cast<int64_t>(prompt_.size())};
    absl::StatusOr<Placement> placement =
        queue_.Wait(ticket, demand, failed_decode, failed_prefill, deadline_, [this] { return Interrupted(); });
    if (!placement.ok()) {
      if (request_->aborted()) {
        SendAbortFinal();
        return grpc::Status::OK;
      }
      return ToGrpcStatus(explain(Annotate(placement.status(), absl::StrCat("request ", request_->id()))));
    }
    metrics_.CountPlacement(*placement);
    if (migration_reason != nullptr) metrics_.CountMigration(std::exchange(migration_reason, nullptr));
    WorkerLease& decode = *placement->decode;
    WorkerLease& prefill = *placement->prefill;
    // A request's choices are separate requests on the workers, each with its own id.
    const std::string choice_id = choice_ == 0 ? request_->id() : absl::StrCat(request_->id(), "#choice", choice_);
    const std::string worker_request_id = dispatch == 0 ? choice_id : absl::StrCat(choice_id, "#retry", dispatch);
    const Outcome outcome = RunAttempt(decode, prefill, worker_request_id);
    if (outcome.status.ok()) return grpc::Status::OK;

    AbortOnWorkers(decode, prefill, worker_request_id);
    if (request_->aborted()) {
      SendAbortFinal();
      return grpc::Status::OK;
    }
    if (absl::Now() >= deadline_ || outcome.status.code() == absl::StatusCode::kDeadlineExceeded) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrFormat("request %s passed its deadline after %.3f s (%s, %s)", request_->id(),
                                          Seconds(absl::Now() - arrival_), decode.Describe(), prefill.Describe()));
    }
    if (ClientGone()) return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");

    const WorkerLease& blamed = outcome.blame == Blame::kDecode ? decode : prefill;
    if (outcome.status.code() == absl::StatusCode::kResourceExhausted && attempt_tokens_ == 0) {
      // The worker filled up between two load reports: back to the request's place in line.
      IC_LOG(Info) << "request " << request_->id() << ": " << blamed.Describe()
                   << " has no room: " << outcome.status.message() << "; waiting in the queue again";
      registry_->MarkFull(blamed);
      request_->ReturnToQueue(choice_);
      continue;
    }
    const absl::Status failure =
        absl::Status(outcome.status.code(), absl::StrCat(blamed.Describe(), " failed: ", outcome.status.message()));
    registry_->CheckAfterFailure(decode, failure);
    registry_->CheckAfterFailure(prefill, failure);
    // Rows that arrived corrupted (DATA_LOSS: a chunk's checksum or the indexer probe failed) blame the
    // transfer, not the pair: the retry may take the same workers, so a pool of one still retries.
    if (failure.code() != absl::StatusCode::kDataLoss) {
      (outcome.blame == Blame::kDecode ? failed_decode : failed_prefill).push_back(blamed.id());
    }
    if (!streamed_.empty()) {
      // Tokens reached the client: the stream moves to another pair, or ends here.
      std::string why_not;
      if (!Retryable(failure.code())) {
        why_not = "another worker would refuse the request too";
      } else if (migrations_ >= options_.migration_limit) {
        why_not = absl::StrCat("the migration limit (", options_.migration_limit, ") is reached");
      } else if (static_cast<int32_t>(streamed_.size()) >= max_new_tokens_) {
        why_not = "every token was generated";  // the final message was lost with the worker
      }
      if (!why_not.empty()) return StreamBroken(failure, why_not);
      ++migrations_;
      migration_reason = outcome.blame == Blame::kDecode ? (outcome.stalled ? "decode_stalled" : "decode_failed")
                                                         : (outcome.stalled ? "prefill_stalled" : "prefill_failed");
      IC_LOG(Info) << "request " << request_->id() << ": " << failure.message() << " after " << streamed_.size()
                   << " tokens; migrating the stream (" << migrations_ << " of at most "
                   << options_.migration_limit << ")";
      // Every move's cause stays in the story (the first is usually the one the client cares about).
      moving = moving.ok() ? failure
                           : absl::Status(failure.code(), absl::StrCat(moving.message(), "; then ", failure.message()));
      request_->ReturnToQueue(choice_);
      continue;
    }
    if (!Retryable(failure.code())) return ToGrpcStatus(failure);
    if (retry) return ToGrpcStatus(Annotate(failure, absl::StrCat(first_failure.message(), "; then on retry")));
    IC_LOG(Info) << "request " << request_->id() << ": " << failure.message() << "; retrying on other workers";
    first_failure = failure;
    request_->ReturnToQueue(choice_);
  }
}

grpc::Status GenerateCall::StreamBroken(const absl::Status& failure, const std::string& why_not_moved) const {
  IC_LOG(Info) << "request " << request_->id() << ": " << failure.message() << " after " << streamed_.size()
               << " tokens; the stream ends (" << why_not_moved << ")";
  const std::string message = absl::StrFormat("%s after %d tokens had been streamed; the stream cannot move on: %s",
                                              failure.message(), streamed_.size(), why_not_moved);
  const grpc::StatusCode code = Retryable(failure.code()) ? grpc::StatusCode::UNAVAILABLE
                                                          : static_cast<grpc::StatusCode>(failure.code());
  return grpc::Status(code, message);
}

std::function<int64_t(int64_t)> GenerateCall::WorkModel() const {
  if (options_.model == nullptr) return nullptr;
  ModelConfig config = *options_.model;
  // The pool's pattern is what its prefill workers run (the registry admits one pattern, or one set of
  // length patterns, of which this prompt's length picks the one it runs).
  if (const std::string pool = registry_->PoolIndexPattern(); !pool.empty()) {
    absl::StatusOr<std::vector<IndexerType>> types = ParseIndexPattern(pool, config.num_layers);
    if (types.ok()) {
      absl::StatusOr<PatternSchedule> schedule =
          PatternSchedule::Create(*std::move(types), registry_->PoolLengthPatterns(), config.num_layers);
      if (schedule.ok()) config.indexer_types = schedule->TypesFor(static_cast<int64_t>(prompt_.size()));
    }
  }
  return [config = std::move(config)](int64_t tokens) {
    return static_cast<int64_t>(PrefillWorkOf(config, tokens).total());
  };
}

v1::DecodeRequest GenerateCall::NextDecodeRequest(const std::string& worker_request_id) const {
  v1::DecodeRequest request;
  request.set_request_id(worker_request_id);
  request.mutable_prompt_ids()->Reserve(static_cast<int>(prompt_.size() + streamed_.size()));
  request.mutable_prompt_ids()->Add(prompt_.begin(), prompt_.end());
  request.mutable_prompt_ids()->Add(streamed_.begin(), streamed_.end());
  *request.mutable_sampling() = client_request_.sampling();
  if (!streamed_.empty()) {
    request.set_resumed_tokens(static_cast<int32_t>(streamed_.size()));
    request.mutable_sampling()->set_max_new_tokens(max_new_tokens_ - static_cast<int32_t>(streamed_.size()));
  }
  request.set_transport(options_.transport);
  request.set_first_token_from_prefill(true);  // P streams it to us (prefill_call.h)
  // A few reports per stage timeout: a live decode worker is never mistaken for a silent one.
  request.set_progress_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(options_.stall_monitor->timeout() / 4)));
  return request;
}

absl::Status GenerateCall::Interrupted() const {
  if (request_->aborted()) return absl::CancelledError("aborted by an Abort request");
  if (ClientGone()) return absl::CancelledError("the client cancelled the request while it waited in the queue");
  return absl::OkStatus();
}

GenerateCall::Outcome GenerateCall::RunAttempt(WorkerLease& decode, WorkerLease& prefill,
                                               const std::string& worker_request_id) {
  std::unique_ptr<grpc::ClientContext> decode_call = NewWorkerCall();
  std::unique_ptr<grpc::ClientContext> prefill_call = NewWorkerCall();
  StallMonitor::Watch watch(*options_.stall_monitor, [&decode_call, &prefill_call] {
    decode_call->TryCancel();  // a call not started yet is cancelled as it starts
    prefill_call->TryCancel();
  });
  admitted_ = false;
  attempt_tokens_ = 0;
  decode_tokens_ = 0;
  last_decode_message_ = absl::Now();
  const AttachedCall decode_attached(*request_, decode_call.get());
  if (!decode_attached.attached()) return {absl::CancelledError("aborted"), Blame::kDecode};
  const v1::DecodeRequest decode_request = NextDecodeRequest(worker_request_id);
  std::unique_ptr<grpc::ClientReader<v1::DecodeResponse>> stream =
      decode.worker().decode->Decode(decode_call.get(), decode_request);

  v1::DecodeResponse admitted;
  if (!stream->Read(&admitted)) {
    absl::Status status = FromGrpcStatus(stream->Finish());
    if (watch.stalled()) return Stalled(false);
    if (status.ok()) status = absl::InternalError("ended its Decode stream without admitting the request");
    return {Annotate(status, "before admitting the request"), Blame::kDecode};
  }
  if (!admitted.has_admitted()) {
    decode_call->TryCancel();
    stream->Finish();
    return {absl::InternalError("its first Decode message was not `admitted`"), Blame::kDecode};
  }
  admitted_ = true;
  last_decode_message_ = absl::Now();
  watch.Progress();
  // The queue time ends with the first prefill that ran, not with a migration's.
  if (streamed_.empty()) prefill_start_ = absl::Now();
  request_->LeaveQueue(choice_);
  IC_LOG(Debug) << "request " << worker_request_id << ": admitted by " << decode.Describe() << ", handoff to "
                << admitted.admitted().handoff_address() << ", prefill on " << prefill.Describe();

  const AttachedCall prefill_attached(*request_, prefill_call.get());
  // Declared after what its handlers use: its destruction joins the call's thread.
  std::optional<PrefillCall> prefill_run;
  if (prefill_attached.attached()) {
    v1::PrefillRequest prefill_request;
    prefill_request.set_request_id(worker_request_id);
    *prefill_request.mutable_prompt_ids() = decode_request.prompt_ids();
    *prefill_request.mutable_sampling() = decode_request.sampling();
    prefill_request.set_resumed_tokens(decode_request.resumed_tokens());
    prefill_request.set_transport(options_.transport);
    prefill_request.set_handoff_address(admitted.admitted().handoff_address());
    // The decode worker's prefix cache holds the prompt's start: only the rest travels.
    prefill_request.set_handoff_from(admitted.admitted().cached_prompt_tokens());
    PrefillCall::Handlers handlers;
    handlers.on_first_token = [this, &watch, &decode_call](const v1::FirstToken& first) {
      watch.Progress();
      if (RelayFirstToken(first)) return true;
      decode_call->TryCancel();
      return false;
    };
    handlers.on_end = [&prefill, &decode_call](const grpc::Status& status) {
      prefill.ReleaseLoad();
      if (!status.ok()) decode_call->TryCancel();
    };
    prefill_run.emplace(*prefill.worker().prefill, *prefill_call, std::move(prefill_request), std::move(handlers));
  } else {
    prefill.ReleaseLoad();
    decode_call->TryCancel();
  }
  const Relayed relayed = RelayTokens(*stream, *decode_call, watch, prefill_run ? &*prefill_run : nullptr);
  const grpc::Status prefill_status =
      prefill_run ? prefill_run->Wait() : grpc::Status(grpc::StatusCode::CANCELLED, "aborted");
  // The queue time counts once, for the dispatch whose prefill ran (a refused one goes back in line).
  if (prefill_status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED && !std::exchange(queue_observed_, true)) {
    metrics_.ObserveQueueTime(prefill_start_ - arrival_);
  }
  if (watch.stalled()) return Stalled(prefill_status.ok());
  if (relayed.status.ok() && relayed.final.has_value()) {
    // The stream is complete whatever P's answer said (a lost ack, a deadline after the handoff).
    if (!prefill_status.ok()) {
      IC_LOG(Warning) << "request " << worker_request_id << ": served, although its prefill call ended with "
                      << FromGrpcStatus(prefill_status);
    }
    SendFinal(*relayed.final, decode, prefill, prefill_status.ok() ? prefill_run->done() : v1::PrefillDone());
    return {absl::OkStatus(), Blame::kDecode};
  }
  if (!prefill_status.ok()) {
    // A handoff the decode worker broke off (it rejected the cache, or died) fails the prefill too;
    // then the decode worker's own status says what went wrong, and it is the one to blame.
    if (!relayed.status.ok() && relayed.status.code() != absl::StatusCode::kCancelled) {
      return {Annotate(relayed.status, "during the handoff"), Blame::kDecode};
    }
    // The prefill worker is alive and says the decode worker refused or broke off the handoff (its
    // failure cancelled our Decode call before D's own error arrived, if D had one to send).
    if (prefill_run.has_value() && prefill_run->handoff_failed()) {
      return {Annotate(FromGrpcStatus(prefill_status), "the prefill worker's handoff to it failed"), Blame::kDecode};
    }
    return {Annotate(FromGrpcStatus(prefill_status), "Prefill"), Blame::kPrefill};
  }
  if (!relayed.status.ok()) return {Annotate(relayed.status, "its Decode stream broke"), Blame::kDecode};
  return {absl::InternalError("it ended its Decode stream without a final message"), Blame::kDecode};
}

GenerateCall::Outcome GenerateCall::Stalled(bool handed_off) const {
  const absl::Duration timeout = options_.stall_monitor->timeout();
  const std::string silence = absl::StrCat("made no progress for ", absl::FormatDuration(timeout));
  if (!admitted_) {
    return {absl::UnavailableError(absl::StrCat(silence, " before admitting the request")), Blame::kDecode, true};
  }
  if (handed_off || decode_tokens_ > 0) {
    return {absl::UnavailableError(absl::StrCat(silence, " while decoding")), Blame::kDecode, true};
  }
  // The decode worker reports the rows received a few times per timeout: heard from lately, it is the
  // prefill worker that sent nothing.
  if (absl::Now() - last_decode_message_ < timeout) {
    return {absl::UnavailableError(absl::StrCat(silence, ": no handoff rows reached the decode worker")),
            Blame::kPrefill, true};
  }
  return {absl::UnavailableError(absl::StrCat(silence, " during the handoff (the decode worker fell silent)")),
          Blame::kDecode, true};
}

bool GenerateCall::RelayFirstToken(const v1::FirstToken& first) {
  v1::GenerateResponse chunk;
  chunk.set_request_id(request_->id());
  chunk.add_token_ids(first.token_id());
  if (first.has_logprobs()) *chunk.add_logprobs() = first.logprobs();
  chunk.set_text(first.text());
  return Relay(chunk);
}

bool GenerateCall::Relay(const v1::GenerateResponse& chunk) {
  const absl::Time now = absl::Now();
  if (!writer_->Write(chunk)) return false;
  const bool first = streamed_.empty();
  metrics_.ObserveTokens(chunk.token_ids_size(), now - (first ? arrival_ : last_token_), first);
  if (first) first_token_ = now;
  last_token_ = now;
  streamed_.insert(streamed_.end(), chunk.token_ids().begin(), chunk.token_ids().end());
  attempt_tokens_ += chunk.token_ids_size();
  return true;
}

GenerateCall::Relayed GenerateCall::RelayTokens(grpc::ClientReaderInterface<v1::DecodeResponse>& stream,
                                                grpc::ClientContext& decode_call, StallMonitor::Watch& watch,
                                                PrefillCall* prefill) {
  v1::DecodeResponse message;
  Relayed relayed;
  int64_t rows_received = 0;
  bool first_token_relayed = false;
  while (stream.Read(&message)) {
    last_decode_message_ = absl::Now();
    if (message.has_progress() && message.progress().rows_received() > rows_received) {
      rows_received = message.progress().rows_received();
      watch.Progress();
    }
    const bool tokens = message.token_ids_size() > 0 || !message.text().empty();
    if ((tokens || message.has_final()) && !first_token_relayed) {
      // D decodes only after a complete, checked handoff (rows, CRCs, probes) from the authenticated
      // prefill worker, whose first token the client must have before D's. Both are the request's: P's
      // is relayed as soon as P streams it (prefill_call.h), without waiting for the handoff's tail.
      if (prefill == nullptr || !prefill->AwaitFirstToken()) {
        decode_call.TryCancel();
        stream.Finish();
        return {absl::CancelledError("the prefill call ended without relaying the first token"), std::nullopt};
      }
      first_token_relayed = true;
    }
    if (tokens) {
      watch.Progress();
      v1::GenerateResponse chunk;
      chunk.set_request_id(request_->id());
      *chunk.mutable_token_ids() = message.token_ids();
      *chunk.mutable_logprobs() = message.logprobs();
      chunk.set_text(message.text());
      if (!Relay(chunk)) {
        decode_call.TryCancel();
        stream.Finish();
        return {absl::CancelledError("the client stream closed"), std::nullopt};
      }
      decode_tokens_ += message.token_ids_size();
    }
    if (message.has_final()) {
      watch.Progress();
      relayed.final = message.final();
    }
  }
  relayed.status = FromGrpcStatus(stream.Finish());
  return relayed;
}

void GenerateCall::SendFinal(const v1::FinalInfo& final, const WorkerLease& decode, const WorkerLease& prefill,
                             const v1::PrefillDone& prefill_result) {
  const absl::Time end = absl::Now();
  const int32_t generated = static_cast<int32_t>(streamed_.size());
  v1::GenerateResponse last;
  last.set_request_id(request_->id());
  v1::FinalInfo& info = *last.mutable_final();
  info.set_finish_reason(final.finish_reason());
  info.set_error(final.error());
  info.set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
  info.set_generated_tokens(generated);
  v1::Timings& timings = *info.mutable_timings();
  timings.set_queue_seconds(Seconds(prefill_start_ - arrival_));
  timings.set_prefill_seconds(prefill_result.prefill_seconds());
  timings.set_handoff_seconds(prefill_result.handoff_seconds());
  if (generated > 0) timings.set_first_token_seconds(Seconds(first_token_ - arrival_));
  timings.set_total_seconds(Seconds(end - arrival_));
  if (generated > 1) timings.set_mean_inter_token_seconds(Seconds(last_token_ - first_token_) / (generated - 1));
  std::string pattern = final.index_pattern();
  if (pattern.empty()) pattern = registry_->IndexPatternOf(decode.id());
  if (pattern.empty()) pattern = registry_->PoolIndexPattern();
  if (pattern.empty()) pattern = options_.index_pattern;
  info.set_index_pattern(pattern);
  info.set_prefill_worker(prefill.id());
  info.set_decode_worker(decode.id());
  writer_->Write(last);  // a client gone by now misses only the summary
  IC_LOG(Info) << "request " << request_->id() << " finished (" << v1::FinishReason_Name(final.finish_reason())
               << ", " << generated << " tokens, " << timings.total_seconds() << " s, " << migrations_
               << " migrations) on " << prefill.Describe() << " → " << decode.Describe();
}

void GenerateCall::AbortOnWorkers(const WorkerLease& decode, const WorkerLease& prefill,
                                  const std::string& worker_request_id) {
  v1::WorkerAbortRequest request;
  request.set_request_id(worker_request_id);
  for (const WorkerLease* worker : {&decode, &prefill}) {
    // Not derived from the client's call: that one may be cancelled already.
    grpc::ClientContext call;
    call.set_deadline(absl::ToChronoTime(absl::Now() + options_.abort_timeout));
    v1::WorkerAbortResponse response;
    const WorkerConnection& connection = worker->worker();
    const grpc::Status status = connection.role == v1::DECODE
                                    ? connection.decode->Abort(&call, request, &response)
                                    : connection.prefill->Abort(&call, request, &response);
    IC_LOG(Debug) << "request " << worker_request_id << ": Abort on " << worker->Describe() << ": "
                  << (status.ok() ? (response.found() ? "freed" : "not held") : status.error_message());
  }
}

std::unique_ptr<grpc::ClientContext> GenerateCall::NewWorkerCall() {
  // Inherits the client's deadline and cancellation; the router's default deadline caps it further.
  std::unique_ptr<grpc::ClientContext> call = grpc::ClientContext::FromServerContext(*server_context_);
  if (deadline_ < absl::InfiniteFuture()) call->set_deadline(absl::ToChronoTime(deadline_));
  return call;
}

bool GenerateCall::ClientGone() const { return server_context_->IsCancelled(); }

void GenerateCall::SendAbortFinal() {
  v1::GenerateResponse last;
  last.set_request_id(request_->id());
  v1::FinalInfo& info = *last.mutable_final();
  info.set_finish_reason(v1::ABORT);
  info.set_error("aborted by an Abort request");
  info.set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
  info.set_generated_tokens(static_cast<int32_t>(streamed_.size()));
  info.mutable_timings()->set_total_seconds(Seconds(absl::Now() - arrival_));
  writer_->Write(last);
  IC_LOG(Info) << "request " << request_->id() << " aborted after " << streamed_.size() << " tokens";
}

}  // namespace indexcache
