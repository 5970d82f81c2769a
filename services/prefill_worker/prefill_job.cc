#include "services/prefill_worker/prefill_job.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/kv/kv_segment.h"
#include "common/model/model_config.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/common/logprobs_proto.h"

namespace indexcache {

// KvRows.data is little-endian rows of the cache's dtype; they are sent as they lie in memory.
static_assert(std::endian::native == std::endian::little, "the handoff's rows assume a little-endian host");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

v1::KvPayloadKind ToProto(KvRowKind kind) {
  return kind == KvRowKind::kLatent ? v1::LATENT : v1::INDEX_KEY;
}

// A failed handoff as the router should read it, whatever code the decode worker or the transport
// chose: DATA_LOSS (corrupt or mismatching rows) and UNAVAILABLE (no connection) keep their code;
// anything else (a refusal: another model or pattern, no room) becomes ABORTED, so that no handoff
// failure reads as the client's INVALID_ARGUMENT. The message is kept.
absl::Status HandoffFailure(const absl::Status& status, absl::string_view context) {
  const absl::StatusCode code = status.code();
  const bool keep = code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kUnavailable;
  return absl::Status(keep ? code : absl::StatusCode::kAborted, absl::StrCat(context, ": ", status.message()));
}

}  // namespace

// ---- JobControl ------------------------------------------------------------------------------

void JobControl::Stop(const absl::Status& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stop_.ok()) return;
  stop_ = why;
  if (sender_ != nullptr && !cancelled_) {
    sender_->Cancel();
    cancelled_ = true;
  }
}

absl::Status JobControl::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_;
}

void JobControl::Attach(HandoffSender* sender) {
  std::lock_guard<std::mutex> lock(mu_);
  sender_ = sender;
  cancelled_ = false;
  if (!stop_.ok()) {
    sender_->Cancel();
    cancelled_ = true;
  }
}

bool JobControl::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  sender_ = nullptr;
  return std::exchange(cancelled_, false);
}

// ---- PrefillJob ------------------------------------------------------------------------------

// What the engine handed the request's sinks (on the loop thread): the segments of its rows as each
// step starts computing them, then the finish. The job waits on `changed` for either.
struct PrefillJob::SinkState final : SegmentSink {
  // Segments queued beyond the one being sent: the engine computes the request's next chunk only
  // while fewer wait, so a slow peer holds at most this many plus one in staging memory.
  static constexpr size_t kMaxQueuedSegments = 2;

  void Take(KvSegment segment) override {
    std::lock_guard<std::mutex> lock(mu);
    segments.push_back(std::move(segment));
    changed.notify_all();
  }
  bool Ready() const override {
    std::lock_guard<std::mutex> lock(mu);
    return segments.size() < kMaxQueuedSegments;
  }
  RowsMemory memory() const override { return staging; }

  // Device memory when the handoff's transport sends from the GPU (set before the engine sees the
  // request).
  RowsMemory staging = RowsMemory::kHost;

  mutable std::mutex mu;
  std::condition_variable changed;
  std::deque<KvSegment> segments;  // handed over, not sent yet
  bool finished = false;
  bool job_over = false;  // Run returned
  TokenEvent event;
  Clock::time_point submitted_at;
  Clock::time_point finished_at;
};

PrefillJob::PrefillJob(EngineLoop& loop, const PrefillJobOptions& options, JobControl& control)
    : loop_(loop), options_(options), control_(control), state_(std::make_shared<SinkState>()) {}

PrefillJob::~PrefillJob() = default;

bool PrefillJob::handoff_rejected() const { return transport_failed_ && control_.stopped().ok(); }

const HandoffTransports& PrefillJob::Transports() const {
  return options_.transports != nullptr ? *options_.transports : HandoffTransports::Defaults();
}

HandoffByteCounts PrefillJob::bytes() const { return sender_ != nullptr ? sender_->bytes() : HandoffByteCounts{}; }

absl::StatusOr<v1::PrefillDone> PrefillJob::Run(const v1::PrefillRequest& request, const SamplingParams& params) {
  absl::StatusOr<v1::PrefillDone> done = RunToAck(request, params);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->job_over = true;
  }
  state_->changed.notify_all();
  return done;
}

std::optional<TokenEvent> PrefillJob::AwaitFirstToken() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->changed.wait(lock, [&] { return state_->finished || state_->job_over; });
  if (!state_->finished || state_->event.finish != RequestFinish::kPrefillDone) return std::nullopt;
  return state_->event;
}

absl::StatusOr<v1::PrefillDone> PrefillJob::RunToAck(const v1::PrefillRequest& request,
                                                     const SamplingParams& params) {
  request_id_ = request.request_id();
  RETURN_IF_ERROR(Submit(request, params));
  absl::StatusOr<v1::PrefillDone> response = Transfer(request);
  if (response.ok()) return response;
  Discard();
  // A stop makes the transport fail with a generic error; the stop's reason is the one to report.
  absl::Status why = control_.stopped();
  return why.ok() ? response.status() : why;
}

absl::Status PrefillJob::Submit(const v1::PrefillRequest& request, const SamplingParams& params) {
  std::vector<int32_t> prompt(request.prompt_ids().begin(), request.prompt_ids().end());
  // Rows leave from where the transport reads them: the engine stages them on the GPU for one that
  // sends from device memory (NCCL with the engine on its GPU), else in pinned host memory.
  const HandoffConnector* connector = Transports().Find(request.transport());
  state_->staging =
      connector != nullptr && connector->capabilities().device_memory ? RowsMemory::kDevice : RowsMemory::kHost;
  state_->submitted_at = Clock::now();
  absl::StatusOr<RequestId> id = loop_.Call([&](Engine& engine) -> absl::StatusOr<RequestId> {
    ASSIGN_OR_RETURN(RequestId id, engine.SubmitPrefill(std::move(prompt), params, state_, request.handoff_from()));
    loop_.Subscribe(id, [state = state_](const TokenEvent& event) {
      if (event.finish == RequestFinish::kNone) return;
      std::lock_guard<std::mutex> lock(state->mu);
      state->finished = true;
      state->event = event;
      state->finished_at = Clock::now();
      state->changed.notify_all();
    });
    return id;
  });
  if (!id.ok()) return id.status();
  id_ = *id;
  return absl::OkStatus();
}

absl::StatusOr<v1::PrefillDone> PrefillJob::Transfer(const v1::PrefillRequest& request) {
  RETURN_IF_ERROR(control_.stopped());
  const absl::Duration left = control_.deadline() - absl::Now();
  if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("the deadline passed before the handoff began");
  const absl::Duration connect_timeout = std::min(options_.connect_timeout, left);
  absl::StatusOr<std::unique_ptr<HandoffSender>> sender =
      Transports().Connect(request.transport(), request.handoff_address(), connect_timeout);
  if (!sender.ok()) {
    transport_failed_ = true;
    return HandoffFailure(sender.status(), absl::StrCat("connecting the handoff to ", request.handoff_address()));
  }
  sender_ = *std::move(sender);
  control_.Attach(sender_.get());
  RETURN_IF_ERROR(control_.stopped());

  const Engine& engine = loop_.engine();
  const KvCacheSpec& spec = engine.cache().spec();
  const Clock::time_point handoff_start = Clock::now();
  v1::HandoffChunk header;
  v1::HandoffHeader* h = header.mutable_header();
  h->set_model_fingerprint(engine.model_fingerprint());
  h->set_index_pattern(
      FormatIndexPattern(engine.PatternTypesFor(request.prompt_ids_size(), request.resumed_tokens())));
  h->set_prompt_tokens(request.prompt_ids_size());
  h->set_latent_dim(KvRowWidth(spec, KvRowKind::kLatent));
  h->set_index_key_dim(KvRowWidth(spec, KvRowKind::kIndexKey));
  h->set_dtype(DTypeName(spec.dtype));
  h->set_first_position(request.handoff_from());  // the decode worker holds the positions before it
  RETURN_IF_ERROR(Send(header));

  // Segments in the order the engine computes them, each slice as soon as its layer has landed.
  for (;;) {
    RETURN_IF_ERROR(control_.stopped());
    ASSIGN_OR_RETURN(std::optional<KvSegment> segment, NextSegment());
    if (!segment.has_value()) break;
    RETURN_IF_ERROR(SendSegment(*segment));
  }
  ASSIGN_OR_RETURN(const TokenEvent first, FirstToken());
  absl::StatusOr<std::vector<IndexerProbe>> probes =
      loop_.Call([&](Engine& engine) { return engine.TakeProbes(id_); });
  RETURN_IF_ERROR(probes.status());
  RETURN_IF_ERROR(SendTrailer(first, *probes));
  absl::StatusOr<v1::HandoffAck> ack = sender_->Finish();
  absl::Status verdict = ack.ok() ? AckStatus(*ack) : ack.status();
  if (!verdict.ok()) {
    transport_failed_ = true;
    return HandoffFailure(verdict, absl::StrCat("handoff to ", request.handoff_address()));
  }
  const Clock::time_point acked = Clock::now();
  control_.Detach();
  loop_.Call([&](Engine& e) { e.Release(id_); });

  v1::PrefillDone response;
  response.set_first_token(first.token);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    response.set_prefill_seconds(Seconds(state_->finished_at - state_->submitted_at));
  }
  response.set_handoff_seconds(Seconds(acked - handoff_start));
  const HandoffByteCounts& bytes = sender_->bytes();
  v1::HandoffStats* stats = response.mutable_handoff();
  stats->set_latent_bytes(bytes.latent_bytes);
  stats->set_index_key_bytes(bytes.index_key_bytes);
  stats->set_metadata_bytes(bytes.metadata_bytes);
  stats->set_chunks(bytes.chunks);
  return response;
}

absl::StatusOr<std::optional<KvSegment>> PrefillJob::NextSegment() {
  std::unique_lock<std::mutex> lock(state_->mu);
  for (;;) {
    if (!state_->segments.empty()) {
      KvSegment segment = std::move(state_->segments.front());
      state_->segments.pop_front();
      lock.unlock();
      loop_.Wake();  // the queue has room: the engine may compute the next chunk
      return segment;
    }
    // Every segment is handed over before the step whose event ends the request.
    if (state_->finished) return std::nullopt;
    // A stop (abort, deadline, the caller gone) is noticed within one wait.
    state_->changed.wait_for(lock, std::chrono::milliseconds(50));
    lock.unlock();
    RETURN_IF_ERROR(control_.stopped());
    lock.lock();
  }
}

absl::StatusOr<TokenEvent> PrefillJob::FirstToken() {
  std::lock_guard<std::mutex> lock(state_->mu);
  const TokenEvent& event = state_->event;
  if (event.finish == RequestFinish::kError) return Annotate(event.error, "prefill failed");
  if (event.finish != RequestFinish::kPrefillDone) {
    return absl::AbortedError(
        absl::StrCat("the engine ended the request during prefill (", RequestFinishName(event.finish), ")"));
  }
  return event;
}

absl::Status PrefillJob::SendSegment(const KvSegment& segment) {
  const int32_t count = segment.count();
  if (count <= 0) return absl::OkStatus();
  for (size_t i = 0; i < segment.slices().size(); ++i) {
    // Layer by layer: a slice leaves as soon as the pass has computed and copied its layer, while
    // the later layers still compute.
    RETURN_IF_ERROR(Annotate(segment.WaitFor(i), "exporting the prompt's cache rows"));
    const KvSlice& slice = segment.slices()[i];
    const std::string_view bytes = segment.bytes(slice);
    const size_t row_bytes = bytes.size() / static_cast<size_t>(count);
    const int32_t rows_per_chunk = static_cast<int32_t>(
        std::max<int64_t>(1, options_.max_chunk_bytes / static_cast<int64_t>(row_bytes)));
    for (int32_t first = 0; first < count; first += rows_per_chunk) {
      const int32_t n = std::min(rows_per_chunk, count - first);
      v1::HandoffChunk chunk;
      v1::KvRows* rows = chunk.mutable_rows();
      rows->set_layer(slice.layer);
      rows->set_kind(ToProto(slice.kind));
      rows->set_begin_position(segment.begin() + first);
      rows->set_num_tokens(n);
      // Sent from the staging memory where the export left them (host or device): no copy into the
      // message.
      RETURN_IF_ERROR(Send(chunk, bytes.substr(static_cast<size_t>(first) * row_bytes, n * row_bytes),
                           segment.memory()));
    }
  }
  IC_LOG(Debug) << "prefill " << request_id_ << ": sent positions [" << segment.begin() << ", " << segment.end()
                << ")";
  return absl::OkStatus();
}

absl::Status PrefillJob::SendTrailer(const TokenEvent& first, const std::vector<IndexerProbe>& probes) {
  v1::HandoffChunk chunk;
  v1::HandoffTrailer* trailer = chunk.mutable_trailer();
  trailer->set_first_token(first.token);
  if (first.logprobs.has_value()) LogprobsToProto(*first.logprobs, *trailer->mutable_first_token_logprobs());
  for (const IndexerProbe& probe : probes) {
    v1::LayerSelection* s = trailer->add_selections();
    s->set_layer(probe.layer);
    s->mutable_query()->Add(probe.query.begin(), probe.query.end());
    s->mutable_head_weights()->Add(probe.head_weights.begin(), probe.head_weights.end());
    s->mutable_topk()->Add(probe.topk.begin(), probe.topk.end());
  }
  return Send(chunk);
}

absl::Status PrefillJob::Send(v1::HandoffChunk& chunk, std::string_view rows_data, RowsMemory memory) {
  chunk.set_request_id(request_id_);
  chunk.set_sequence(sequence_++);
  const Clock::time_point start = Clock::now();
  absl::Status sent;
  if (memory == RowsMemory::kDevice) {
    // The host cannot read device rows: the transport checksums them on the GPU and seals the chunk.
    sent = sender_->SendDeviceRows(chunk, rows_data.data(), rows_data.size());
  } else {
    SealChunk(chunk, rows_data);
    sent = sender_->Send(chunk, rows_data);
  }
  send_time_ += absl::FromChrono(Clock::now() - start);
  if (!sent.ok()) {
    transport_failed_ = true;
    return HandoffFailure(sent, "handoff");
  }
  return absl::OkStatus();
}

void PrefillJob::Discard() {
  if (sender_ != nullptr) {
    if (!control_.Detach()) sender_->Cancel();
  }
  if (id_ < 0) return;
  const bool finished = loop_.Call([&](Engine& engine) {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->finished) {
      engine.Release(id_);  // held after kPrefillDone (a no-op when the engine already dropped it)
    } else {
      engine.Abort(id_);  // the next step frees its blocks and reports kAbort to the sink
    }
    return state_->finished;
  });
  if (finished) return;
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->changed.wait(lock, [&] { return state_->finished; });
}

}  // namespace indexcache
