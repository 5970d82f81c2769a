#include "services/decode_worker/handoff_importer.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/kv/kv_segment.h"
#include "common/model/model_config.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/common/logprobs_proto.h"

namespace indexcache {
namespace {

using Phase = DecodeSession::Phase;

absl::Status Mismatch(const std::string& what, const std::string& theirs, const std::string& ours) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "the handoff's %s: '%s', but this decode worker serves '%s'; route it to a matching worker", what, theirs,
      ours));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HandoffImporter>> HandoffImporter::Create(EngineLoop& loop,
                                                                         const ImportOptions& options) {
  // Rows wait in an area until a batch is complete: two batches and the largest chunk must fit.
  auto create_area = [&](size_t bytes, RowsMemory memory) -> absl::StatusOr<std::shared_ptr<LandingArea>> {
    if (2 * options.batch_bytes + kMaxHandoffChunkBytes > bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "a %d MiB import batch does not fit a %d MiB receive area (it needs 2 batches + %d MiB)",
          options.batch_bytes >> 20, bytes >> 20, kMaxHandoffChunkBytes >> 20));
    }
    return loop.Call([&](Engine& engine) { return engine.CreateReceiveArea(bytes, memory); });
  };
  ASSIGN_OR_RETURN(std::shared_ptr<LandingArea> area, create_area(options.receive_area_bytes, RowsMemory::kHost));
  std::shared_ptr<LandingArea> device_area;
  if (options.device_receive_area_bytes > 0) {
    ASSIGN_OR_RETURN(device_area, create_area(options.device_receive_area_bytes, RowsMemory::kDevice));
  }
  return std::unique_ptr<HandoffImporter>(
      new HandoffImporter(loop, options, std::move(area), std::move(device_area)));
}

HandoffImporter::HandoffImporter(EngineLoop& loop, const ImportOptions& options,
                                 std::shared_ptr<LandingArea> receive_area,
                                 std::shared_ptr<LandingArea> device_receive_area)
    : loop_(loop),
      options_(options),
      receive_area_(std::move(receive_area)),
      device_receive_area_(std::move(device_receive_area)),
      fingerprint_(loop.engine().model_fingerprint()),
      patterns_(loop.engine().patterns().Named()),
      num_layers_(loop.engine().config().num_layers),
      latent_dim_(KvRowWidth(loop.engine().cache().spec(), KvRowKind::kLatent)),
      index_key_dim_(KvRowWidth(loop.engine().cache().spec(), KvRowKind::kIndexKey)),
      dtype_(loop.engine().cache().spec().dtype),
      probe_query_size_(loop.engine().config().index_n_heads * loop.engine().config().index_head_dim),
      probe_heads_(loop.engine().config().index_n_heads),
      vocab_size_(loop.engine().config().vocab_size) {}

absl::Status HandoffImporter::Add(std::shared_ptr<DecodeSession> session) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string id = session->request_id();
  if (!sessions_.try_emplace(id, std::move(session)).second) {
    return absl::AlreadyExistsError(absl::StrCat("request '", id, "' is already on this decode worker"));
  }
  return absl::OkStatus();
}

void HandoffImporter::Remove(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase(request_id);
}

std::shared_ptr<DecodeSession> HandoffImporter::Find(const std::string& request_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(request_id);
  return it == sessions_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<DecodeSession>> HandoffImporter::All() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<DecodeSession>> all;
  for (const auto& [id, session] : sessions_) all.push_back(session);
  return all;
}

size_t HandoffImporter::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_.size();
}

void HandoffImporter::Reject(DecodeSession& session, const absl::Status& why) {
  ++rejected_;
  IC_LOG(Debug) << "handoff of request '" << session.request_id() << "' refused: " << why;
  session.Fail(loop_, why);
}

namespace {

absl::Status NotAdmitted(const std::string& request_id) {
  return absl::NotFoundError(
      absl::StrCat("request '", request_id, "' is not admitted on this decode worker (never, or no longer)"));
}

}  // namespace

absl::StatusOr<LandedRows> HandoffImporter::LandRows(const v1::HandoffChunk& chunk, size_t bytes,
                                                     RowsMemory memory) {
  // Area only for a request that waits for rows; a stray stream gets nothing to hold.
  if (Find(chunk.request_id()) == nullptr) return NotAdmitted(chunk.request_id());
  LandingArea* area = memory == RowsMemory::kDevice ? device_receive_area_.get() : receive_area_.get();
  if (area == nullptr) {
    return absl::FailedPreconditionError("rows sent to device memory, but this decode worker has no device receive area");
  }
  return area->Take(bytes, absl::Now() + options_.receive_area_wait);
}

absl::Status HandoffImporter::OnChunk(v1::HandoffChunk& chunk, LandedRows rows) {
  std::shared_ptr<DecodeSession> session = Find(chunk.request_id());
  if (session == nullptr) {
    ++rejected_;
    return NotAdmitted(chunk.request_id());
  }
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(session->import_mu);
    status = Apply(*session, chunk, rows);
  }
  if (!status.ok()) Reject(*session, Annotate(status, "the handoff from the prefill worker was refused"));
  return status;
}

absl::Status HandoffImporter::Apply(DecodeSession& session, v1::HandoffChunk& chunk, LandedRows& rows) {
  DecodeSession::Import& state = session.import;
  if (state.phase == Phase::kEnded) {
    return absl::FailedPreconditionError(absl::StrCat("request '", session.request_id(), "' has already ended"));
  }
  if (state.phase != Phase::kAwaitingHeader && state.phase != Phase::kRows) {
    return absl::InvalidArgumentError(absl::StrFormat("chunk %d arrived after the trailer", chunk.sequence()));
  }
  RETURN_IF_ERROR(VerifyChunkChecksum(chunk, rows));
  if (chunk.sequence() != state.next_sequence) {
    return absl::DataLossError(absl::StrFormat("chunk %d arrived where chunk %d was due (a gap or a repeat)",
                                               chunk.sequence(), state.next_sequence));
  }
  ++state.next_sequence;
  switch (chunk.body_case()) {
    case v1::HandoffChunk::kHeader:
      if (state.phase != Phase::kAwaitingHeader) return absl::InvalidArgumentError("a second handoff header");
      RETURN_IF_ERROR(CheckHeader(chunk.header(), session));
      // Every layer holds the cached prefix already; rows continue from there.
      state.latent_rows.assign(num_layers_, session.cached_tokens());
      state.index_key_rows.assign(num_layers_, session.cached_tokens());
      state.bytes_to_come = PromptRowBytes(session, session.prompt_tokens() - session.cached_tokens());
      state.phase = Phase::kRows;
      return absl::OkStatus();
    case v1::HandoffChunk::kRows:
      if (state.phase != Phase::kRows) return absl::InvalidArgumentError("cache rows arrived before the header");
      return AcceptRows(session, *chunk.mutable_rows(), rows);
    case v1::HandoffChunk::kTrailer:
      if (state.phase != Phase::kRows) return absl::InvalidArgumentError("the trailer arrived before the header");
      RETURN_IF_ERROR(VerifyTrailer(session, chunk.trailer()));
      state.phase = Phase::kTrailerVerified;
      return absl::OkStatus();
    case v1::HandoffChunk::BODY_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(absl::StrFormat("chunk %d carries no header, rows or trailer", chunk.sequence()));
}

size_t HandoffImporter::PromptRowBytes(const DecodeSession& session, int32_t prompt_tokens) const {
  size_t per_token = 0;
  for (bool full : loop_.engine().FullLayersOf(session.pattern())) {
    per_token += (latent_dim_ + (full ? index_key_dim_ : 0)) * DTypeSize(dtype_);
  }
  return per_token * static_cast<size_t>(prompt_tokens);
}

absl::Status HandoffImporter::CheckHeader(const v1::HandoffHeader& header, const DecodeSession& session) const {
  if (header.model_fingerprint() != fingerprint_) {
    return Mismatch("model fingerprint", header.model_fingerprint(), fingerprint_);
  }
  // An adaptive pattern's workers agree on it by the prompt's length (Engine::PatternFor).
  const std::string& pattern = patterns_[session.pattern()].second;
  if (header.index_pattern() != pattern) return Mismatch("IndexCache layer pattern", header.index_pattern(), pattern);
  if (header.prompt_tokens() != session.prompt_tokens()) {
    return absl::InvalidArgumentError(absl::StrFormat("the handoff carries a %d-token prompt, the request has %d",
                                                      header.prompt_tokens(), session.prompt_tokens()));
  }
  if (header.first_position() != session.cached_tokens()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the handoff's rows start at position %d, but this worker holds the first %d in its prefix cache",
        header.first_position(), session.cached_tokens()));
  }
  if (header.latent_dim() != latent_dim_ || header.index_key_dim() != index_key_dim_) {
    return Mismatch("row widths (latent, index key)",
                    absl::StrCat(header.latent_dim(), ", ", header.index_key_dim()),
                    absl::StrCat(latent_dim_, ", ", index_key_dim_));
  }
  // Rows travel as the pools store them; a worker on another device kind stores another dtype.
  if (header.dtype() != DTypeName(dtype_)) return Mismatch("row dtype", header.dtype(), DTypeName(dtype_));
  return absl::OkStatus();
}

absl::Status HandoffImporter::AcceptRows(DecodeSession& session, v1::KvRows& rows, LandedRows& landed) {
  const int32_t layer = rows.layer();
  if (layer < 0 || layer >= num_layers_) {
    return absl::InvalidArgumentError(absl::StrFormat("rows of layer %d: the model has %d layers", layer, num_layers_));
  }
  const std::vector<bool>& full_layers = loop_.engine().FullLayersOf(session.pattern());
  KvRowKind kind;
  std::vector<int32_t>* received;
  int32_t width;
  if (rows.kind() == v1::LATENT) {
    kind = KvRowKind::kLatent;
    received = &session.import.latent_rows;
    width = latent_dim_;
  } else if (rows.kind() == v1::INDEX_KEY) {
    if (!full_layers[layer]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "index-key rows of layer %d, a Shared layer: Shared layers reuse a Full layer's indices and have none",
          layer));
    }
    kind = KvRowKind::kIndexKey;
    received = &session.import.index_key_rows;
    width = index_key_dim_;
  } else {
    return absl::InvalidArgumentError(absl::StrFormat("rows of layer %d have no payload kind", layer));
  }
  const int32_t begin = rows.begin_position(), count = rows.num_tokens();
  int32_t& have = (*received)[layer];
  if (begin != have || count < 1 || begin + static_cast<int64_t>(count) > session.prompt_tokens()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s rows [%d, %d) of layer %d do not continue the %d received of the %d-token prompt",
        v1::KvPayloadKind_Name(rows.kind()), begin, int64_t{begin} + count, layer, have, session.prompt_tokens()));
  }
  const size_t bytes = static_cast<size_t>(count) * width * DTypeSize(dtype_);
  const size_t arrived = landed.empty() ? rows.data().size() : landed.size;
  if (arrived != bytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s rows of layer %d: %d bytes for %d rows of %d %s values",
                                                      v1::KvPayloadKind_Name(rows.kind()), layer, arrived, count,
                                                      width, DTypeName(dtype_)));
  }
  // Little-endian rows are the host's layout; the import copies them into the pools from where they
  // landed (host or device memory), or from the received message's bytes, moved out of it uncopied.
  DecodeSession::PendingRows pending{layer, kind, begin, count, std::move(landed)};
  if (pending.rows.empty()) {
    auto message_bytes = std::make_shared<std::string>(std::move(*rows.mutable_data()));
    pending.rows = LandedRows{message_bytes->data(), message_bytes->size(), message_bytes};
  }
  have += count;
  session.import.bytes_to_come -= bytes;  // the checks above bound it by what the header promised
  const size_t batch = session.import.bytes_to_come <= options_.eager_tail_bytes ? 0 : options_.batch_bytes;
  if (session.QueueRows(std::move(pending), batch)) {
    // The transport thread goes on receiving while the loop writes the rows: the trailer's check,
    // which runs on the loop after this import, finds any failure (DecodeSession::import_error).
    loop_.Post([session = session.shared_from_this()](Engine& engine) {
      absl::Status imported = ImportRows(engine, *session, session->TakeRows());
      if (!imported.ok()) session->RecordImportError(imported);
    });
  }
  return absl::OkStatus();
}

absl::Status HandoffImporter::ImportRows(Engine& engine, const DecodeSession& session,
                                         const std::vector<DecodeSession::PendingRows>& batch) {
  size_t bytes = 0;
  for (const DecodeSession::PendingRows& p : batch) {
    RETURN_IF_ERROR(engine.ImportRows(session.engine_id(), p.layer, p.kind, p.begin, p.count, p.rows));
    bytes += p.rows.size;
  }
  IC_LOG(Debug) << "request '" << session.request_id() << "': imported " << batch.size() << " row blocks (" << bytes
                << " bytes)";
  return absl::OkStatus();
}

absl::Status HandoffImporter::VerifyTrailer(DecodeSession& session, const v1::HandoffTrailer& trailer) {
  const int32_t prompt = session.prompt_tokens();
  const int32_t num_layers = num_layers_;
  const std::vector<bool>& full_layers = loop_.engine().FullLayersOf(session.pattern());
  for (int32_t layer = 0; layer < num_layers; ++layer) {
    const int32_t latent = session.import.latent_rows[layer];
    const int32_t keys = session.import.index_key_rows[layer];
    if (latent != prompt || (full_layers[layer] && keys != prompt)) {
      return absl::DataLossError(absl::StrFormat(
          "the trailer arrived before all rows: layer %d has %d of %d latent rows%s", layer, latent, prompt,
          full_layers[layer] ? absl::StrFormat(" and %d index-key rows", keys) : ""));
    }
  }
  if (trailer.first_token() < 0 || trailer.first_token() >= vocab_size_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("first token %d is outside the vocabulary [0, %d)", trailer.first_token(), vocab_size_));
  }
  std::vector<IndexerProbe> probes;
  std::vector<bool> seen(num_layers, false);
  for (const v1::LayerSelection& s : trailer.selections()) {
    if (s.layer() < 0 || s.layer() >= num_layers || !full_layers[s.layer()] || seen[s.layer()]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("the trailer's selection for layer %d is not one per Full layer", s.layer()));
    }
    if (s.query_size() != probe_query_size_ || s.head_weights_size() != probe_heads_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "layer %d's probe has %d query values and %d head weights; the indexer takes %d and %d", s.layer(),
          s.query_size(), s.head_weights_size(), probe_query_size_, probe_heads_));
    }
    seen[s.layer()] = true;
    IndexerProbe& probe = probes.emplace_back();
    probe.layer = s.layer();
    probe.query.assign(s.query().begin(), s.query().end());
    probe.head_weights.assign(s.head_weights().begin(), s.head_weights().end());
    probe.topk.assign(s.topk().begin(), s.topk().end());
  }
  for (int32_t layer = 0; layer < num_layers; ++layer) {
    if (full_layers[layer] && !seen[layer]) {
      return absl::InvalidArgumentError(absl::StrFormat("the trailer lacks Full layer %d's selection", layer));
    }
  }
  const RequestId id = session.engine_id();
  RETURN_IF_ERROR(loop_.Call([&](Engine& engine) -> absl::Status {
    // The import posted before runs before this call; it may have left nothing, or the last rows.
    RETURN_IF_ERROR(session.import_error());
    RETURN_IF_ERROR(ImportRows(engine, session, session.TakeRows()));
    return engine.VerifyProbes(id, probes);
  }));
  session.import.first_token = trailer.first_token();
  // The engine's StartDecode refuses a request asking for logprobs whose first token has none.
  if (trailer.has_first_token_logprobs()) {
    ASSIGN_OR_RETURN(session.import.first_logprobs, LogprobsFromProto(trailer.first_token_logprobs(), vocab_size_));
  }
  return absl::OkStatus();
}

v1::HandoffAck HandoffImporter::OnComplete(const std::string& request_id) {
  std::shared_ptr<DecodeSession> session = Find(request_id);
  if (session == nullptr) {
    return MakeAck(absl::NotFoundError(absl::StrCat("request '", request_id, "' ended before its handoff completed")));
  }
  absl::Status status;
  {
    std::lock_guard<std::mutex> lock(session->import_mu);
    DecodeSession::Import& state = session->import;
    if (state.phase != Phase::kTrailerVerified) {
      status = absl::FailedPreconditionError(
          absl::StrCat("request '", request_id, "' cannot start decoding: its handoff is incomplete or it ended"));
    } else {
      const RequestId id = session->engine_id();
      const int32_t first_token = state.first_token;
      const absl::Time started = absl::Now();
      status = loop_.Call([&](Engine& engine) -> absl::Status {
        ASSIGN_OR_RETURN(TokenEvent event, engine.StartDecode(id, first_token, state.first_logprobs));
        // The first token reaches the session, and the later tokens' sink is installed, in the same
        // loop turn as StartDecode: the loop's next step cannot overtake the first token.
        session->Push(event);
        if (event.finish == RequestFinish::kNone) {
          loop_.Subscribe(id, [session](const TokenEvent& e) { session->Push(e); });
        }
        return absl::OkStatus();
      });
      if (status.ok()) {
        state.phase = Phase::kDecoding;
        state.decode_started_at = started;
      }
    }
  }
  if (!status.ok()) {
    Reject(*session, Annotate(status, "the handoff from the prefill worker was refused"));
    return MakeAck(status);
  }
  IC_LOG(Debug) << "request '" << request_id << "': handoff complete, decoding";
  return MakeAck(absl::OkStatus());
}

void HandoffImporter::OnBroken(const std::string& request_id, const absl::Status& why) {
  std::shared_ptr<DecodeSession> session = Find(request_id);
  if (session == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(session->import_mu);
    // A stream that breaks after decoding started lost nothing: the request has all it needs.
    if (session->import.phase == Phase::kDecoding || session->import.phase == Phase::kEnded) return;
  }
  Reject(*session, Annotate(why, "the handoff stream broke"));
}

}  // namespace indexcache
