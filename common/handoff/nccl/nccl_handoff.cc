#include "common/handoff/nccl/nccl_handoff.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <optional>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/handoff/tcp/handoff_stream.h"
#include "common/handoff/tcp/handshake.h"
#include "common/handoff/tcp/sender_verdict.h"
#include "common/handoff/tcp/tcp_frame.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// Connections to try per Connect: a pair whose communicator the decode worker no longer knows (it
// restarted) or that another handoff just aborted is replaced once.
constexpr int kConnectAttempts = 2;

absl::Status WriteControl(FramedConnection& connection, const v1::NcclControl& message) {
  return connection.WriteFrame(FrameKind::kChunk, message.SerializeAsString(), {});
}

// The next control message, or nullopt at the end frame.
absl::StatusOr<std::optional<v1::NcclControl>> ReadControl(FramedConnection& connection) {
  ASSIGN_OR_RETURN(FramePrefix prefix, connection.ReadPrefix());
  if (prefix.kind == FrameKind::kEnd) {
    if (prefix.metadata_bytes != 0 || prefix.payload_bytes != 0) {
      return absl::InvalidArgumentError("a handoff end frame must be empty");
    }
    return std::nullopt;
  }
  if (prefix.kind != FrameKind::kChunk || prefix.payload_bytes != 0) {
    return absl::InvalidArgumentError(
        "an NCCL handoff control frame must be a chunk frame without payload (rows travel over NCCL)");
  }
  std::string metadata;
  RETURN_IF_ERROR(connection.ReadInto(metadata, prefix.metadata_bytes));
  v1::NcclControl message;
  if (!message.ParseFromString(metadata)) {
    return absl::InvalidArgumentError("an NCCL handoff control frame does not hold an NcclControl");
  }
  return message;
}

absl::Status WriteAck(FramedConnection& connection, const absl::Status& status) {
  return connection.WriteFrame(FrameKind::kAck, MakeAck(status).SerializeAsString(), {});
}

// `bytes` of host memory in `data` (resized), which the caller keeps: where rows land in a message.
absl::StatusOr<LandedRows> InString(std::string& data, size_t bytes) {
  data.resize(bytes);
  return LandedRows{.data = data.data(), .size = bytes};
}

// Unique across the prefill workers a decode worker serves: process id and 64 random bits.
std::string NewCommunicatorName() {
  std::random_device random;
  const uint64_t bits = (uint64_t{random()} << 32) | random();
  return absl::StrFormat("%d-%016x", getpid(), bits);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Decode side

// One communicator a prefill worker opened to this decode worker.
struct NcclReceiverComm {
  enum class State { kJoining, kReady, kDead };

  explicit NcclReceiverComm(std::string name) : name(std::move(name)) {}

  const std::string name;
  std::mutex mu;
  std::condition_variable changed;
  State state = State::kJoining;         // guarded by mu
  std::unique_ptr<PeerChannel> channel;  // set once kReady, then only used by the ticket's owner
  uint64_t next_ticket = 0;              // guarded by mu: the ticket to receive next
};

class NcclHandoffServer::Communicators {
 public:
  Communicators(PeerChannelFactory& channels, absl::Duration timeout) : channels_(channels), timeout_(timeout) {}

  // Handles a connection's NcclOpen: a new communicator is registered, accepted (`accept` sends the
  // ack) and joined; a known one is waited for until joined, then accepted.
  absl::StatusOr<std::shared_ptr<NcclReceiverComm>> Open(const v1::NcclOpen& open,
                                                     const std::function<absl::Status()>& accept) {
    if (open.communicator().empty()) return absl::InvalidArgumentError("NcclOpen names no communicator");
    if (!open.unique_id().empty()) return Create(open, accept);
    std::shared_ptr<NcclReceiverComm> comm;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("the decode worker's NCCL handoff is shutting down");
      auto it = comms_.find(open.communicator());
      if (it == comms_.end()) {
        return absl::NotFoundError(absl::StrCat("NCCL communicator '", open.communicator(),
                                                "' is unknown here (this decode worker restarted, or aborted it)"));
      }
      comm = it->second;
    }
    {
      std::unique_lock<std::mutex> lock(comm->mu);
      comm->changed.wait_for(lock, absl::ToChronoNanoseconds(timeout_),
                             [&] { return comm->state != NcclReceiverComm::State::kJoining; });
      if (comm->state != NcclReceiverComm::State::kReady) {
        return absl::UnavailableError(absl::StrCat("NCCL communicator '", comm->name, "' did not come up"));
      }
    }
    RETURN_IF_ERROR(accept());
    return comm;
  }

  // Receives ticket `payload.ticket` into `dest` (payload.bytes of `memory`, from `land`), after every
  // earlier ticket of the communicator; device rows also get their CRC-32, computed on the GPU while
  // this thread still owns the channel.
  absl::Status Receive(NcclReceiverComm& comm, const v1::NcclPayload& payload, RowsMemory memory,
                       const std::function<absl::StatusOr<LandedRows>(size_t)>& land, LandedRows& dest) {
    if (payload.bytes() == 0 || payload.bytes() > kMaxHandoffChunkBytes) {
      Kill(comm);
      return absl::InvalidArgumentError(absl::StrFormat("an NCCL rows payload of %d bytes (1 to %d allowed)",
                                                        payload.bytes(), kMaxHandoffChunkBytes));
    }
    {
      std::unique_lock<std::mutex> lock(comm.mu);
      const bool turn = comm.changed.wait_for(lock, absl::ToChronoNanoseconds(timeout_), [&] {
        return comm.state != NcclReceiverComm::State::kReady || comm.next_ticket >= payload.ticket();
      });
      if (comm.state != NcclReceiverComm::State::kReady) {
        return absl::UnavailableError(absl::StrCat("NCCL communicator '", comm.name, "' was aborted"));
      }
      if (!turn || comm.next_ticket != payload.ticket()) {
        const uint64_t expected = comm.next_ticket;
        lock.unlock();
        Kill(comm);
        return turn ? absl::InvalidArgumentError(absl::StrFormat("NCCL ticket %d arrived twice", payload.ticket()))
                    : absl::DeadlineExceededError(absl::StrFormat(
                          "NCCL ticket %d waited %s for ticket %d, which never came (another handoff broke)",
                          payload.ticket(), absl::FormatDuration(timeout_), expected));
      }
    }
    // This thread owns the channel until it moves next_ticket on: later tickets wait above. A ticket
    // with nowhere to land is still received (and dropped), so the sender is not left inside ncclSend
    // and the communicator stays good; the landing's error then ends this handoff.
    absl::StatusOr<LandedRows> landed = land(payload.bytes());
    absl::Status received;
    if (landed.ok()) {
      dest = *std::move(landed);
      received = comm.channel->Recv(dest.data, payload.bytes(), memory, absl::Now() + timeout_, nullptr);
      if (received.ok() && memory == RowsMemory::kDevice) {
        absl::StatusOr<uint32_t> crc =
            comm.channel->DeviceRowsCrc32(dest.data, payload.bytes(), absl::Now() + timeout_, nullptr);
        received = crc.status();
        if (crc.ok()) dest.crc = *crc;
      }
    } else {
      std::string dropped(payload.bytes(), '\0');
      received = comm.channel->Recv(dropped.data(), dropped.size(), RowsMemory::kHost, absl::Now() + timeout_, nullptr);
    }
    if (!received.ok()) {
      Kill(comm);
      return received;
    }
    {
      std::lock_guard<std::mutex> lock(comm.mu);
      ++comm.next_ticket;
    }
    comm.changed.notify_all();
    return landed.status();
  }

  // Aborts `comm` (waiting receivers fail) and forgets it.
  void Kill(NcclReceiverComm& comm) {
    {
      std::lock_guard<std::mutex> lock(comm.mu);
      if (comm.state == NcclReceiverComm::State::kDead) return;
      comm.state = NcclReceiverComm::State::kDead;
      if (comm.channel != nullptr) comm.channel->Abort();
    }
    comm.changed.notify_all();
    IC_LOG(Info) << "NCCL handoff communicator '" << comm.name << "' aborted";
    std::lock_guard<std::mutex> lock(mu_);
    auto it = comms_.find(comm.name);
    if (it != comms_.end() && it->second.get() == &comm) comms_.erase(it);
  }

  void Shutdown() {
    std::vector<std::shared_ptr<NcclReceiverComm>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      for (auto& [name, comm] : comms_) all.push_back(comm);
    }
    for (auto& comm : all) Kill(*comm);
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return comms_.size();
  }

 private:
  absl::StatusOr<std::shared_ptr<NcclReceiverComm>> Create(const v1::NcclOpen& open,
                                                       const std::function<absl::Status()>& accept) {
    auto comm = std::make_shared<NcclReceiverComm>(open.communicator());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("the decode worker's NCCL handoff is shutting down");
      if (!comms_.try_emplace(comm->name, comm).second) {
        return absl::AlreadyExistsError(absl::StrCat("NCCL communicator '", comm->name, "' exists already"));
      }
    }
    // The sender joins once it reads the ack; both joins meet in NCCL's bootstrap.
    absl::Status status = accept();
    absl::StatusOr<std::unique_ptr<PeerChannel>> channel =
        status.ok() ? channels_.Join(open.unique_id(), /*rank=*/1, absl::Now() + timeout_) : status;
    if (!channel.ok()) {
      Kill(*comm);
      return channel.status();
    }
    {
      std::lock_guard<std::mutex> lock(comm->mu);
      if (comm->state == NcclReceiverComm::State::kDead) {
        return absl::UnavailableError("the decode worker's NCCL handoff is shutting down");
      }
      comm->channel = *std::move(channel);
      comm->state = NcclReceiverComm::State::kReady;
    }
    comm->changed.notify_all();
    IC_LOG(Info) << "NCCL handoff communicator '" << comm->name << "' joined";
    return comm;
  }

  PeerChannelFactory& channels_;
  const absl::Duration timeout_;
  mutable std::mutex mu_;
  bool stopping_ = false;                                                    // guarded by mu_
  absl::flat_hash_map<std::string, std::shared_ptr<NcclReceiverComm>> comms_;   // guarded by mu_
};

NcclHandoffServer::NcclHandoffServer(HandoffSink* sink, std::unique_ptr<PeerChannelFactory> channels,
                                     const NcclHandoffOptions& options)
    : sink_(sink),
      options_(options),
      channels_(std::move(channels)),
      communicators_(std::make_unique<Communicators>(*channels_, options.io_timeout)) {}

NcclHandoffServer::~NcclHandoffServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<NcclHandoffServer>> NcclHandoffServer::Start(
    const std::string& host, int port, HandoffSink* sink, std::unique_ptr<PeerChannelFactory> channels,
    const NcclHandoffOptions& options) {
  std::unique_ptr<NcclHandoffServer> server(new NcclHandoffServer(sink, std::move(channels), options));
  NcclHandoffServer* self = server.get();
  ASSIGN_OR_RETURN(server->control_,
                   TcpHandoffServer::StartWithHandler(
                       host, port, [self](FramedConnection& connection) { self->Serve(connection); },
                       {.io_timeout = options.io_timeout, .token = options.token}));
  IC_LOG(Info) << "NCCL handoff control endpoint listening on " << server->address();
  return server;
}

const std::string& NcclHandoffServer::address() const { return control_->address(); }

size_t NcclHandoffServer::communicators() const { return communicators_->size(); }

void NcclHandoffServer::Shutdown() {
  // Receivers blocked on the GPU first, then the connections (whose handlers the control server waits for).
  communicators_->Shutdown();
  if (control_ != nullptr) control_->Shutdown();
}

void NcclHandoffServer::Serve(FramedConnection& connection) {
  absl::StatusOr<std::shared_ptr<NcclReceiverComm>> comm = absl::InvalidArgumentError(
      "an NCCL handoff connection must begin with NcclOpen");
  absl::StatusOr<std::optional<v1::NcclControl>> first = ReadControl(connection);
  if (!first.ok()) {
    comm = first.status();
  } else if (first->has_value() && (*first)->has_open()) {
    comm = communicators_->Open((*first)->open(), [&] { return WriteAck(connection, absl::OkStatus()); });
  }
  if (!comm.ok()) {
    // No request is named yet: nothing for the sink to hear.
    IC_LOG(Debug) << "NCCL handoff connection refused: " << comm.status();
    ReplyAndClose(connection, MakeAck(comm.status()));
    return;
  }
  // Reads a chunk; a rows chunk's bytes come over the communicator, in ticket order: into the sink's
  // device area when rows lie on the GPU, else into the message (through the channel's device buffer).
  auto read_chunk = [&](v1::HandoffChunk& chunk, LandedRows& rows) -> absl::StatusOr<bool> {
    ASSIGN_OR_RETURN(std::optional<v1::NcclControl> control, ReadControl(connection));
    if (!control.has_value()) return false;
    if (!control->has_chunk()) {
      if (control->has_payload()) communicators_->Kill(**comm);  // a ticket nobody will receive
      return absl::InvalidArgumentError("an NCCL handoff control frame after NcclOpen must carry a chunk");
    }
    chunk = std::move(*control->mutable_chunk());
    if (control->has_payload()) {
      if (!chunk.has_rows() || !chunk.rows().data().empty()) {
        communicators_->Kill(**comm);
        return absl::InvalidArgumentError("an NCCL payload must belong to a rows chunk whose data is left empty");
      }
      if (options_.rows == RowsMemory::kDevice) {
        RETURN_IF_ERROR(communicators_->Receive(
            **comm, control->payload(), RowsMemory::kDevice,
            [&](size_t bytes) { return sink_->LandRows(chunk, bytes, RowsMemory::kDevice); }, rows));
      } else {
        std::string& data = *chunk.mutable_rows()->mutable_data();
        LandedRows in_message;
        RETURN_IF_ERROR(communicators_->Receive(**comm, control->payload(), RowsMemory::kHost,
                                                [&](size_t bytes) { return InString(data, bytes); }, in_message));
      }
    }
    return true;
  };
  const v1::HandoffAck verdict = ServeHandoffStream(*sink_, read_chunk);
  if (absl::Status sent = connection.WriteFrame(FrameKind::kAck, verdict.SerializeAsString(), {}); !sent.ok()) {
    IC_LOG(Debug) << "could not send the NCCL handoff verdict: " << sent;
    return;
  }
  // A sender that has not read the verdict yet may be in ncclSend for a frame written meanwhile:
  // receive (and drop) those tickets until it ends the stream or goes.
  std::string discarded;
  for (;;) {
    absl::StatusOr<std::optional<v1::NcclControl>> control = ReadControl(connection);
    if (!control.ok() || !control->has_value()) break;
    LandedRows dropped;
    if ((*control)->has_payload() &&
        !communicators_
             ->Receive(**comm, (*control)->payload(), RowsMemory::kHost,
                       [&](size_t bytes) { return InString(discarded, bytes); }, dropped)
             .ok()) {
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill side

struct NcclHandoffClient::Pair {
  Pair(std::string address, std::string name) : address(std::move(address)), name(std::move(name)) {}

  const std::string address;
  const std::string name;
  std::mutex mu;                         // held while joining and for each chunk's send
  bool joined = false;                   // guarded by mu
  bool dead = false;                     // guarded by mu
  std::unique_ptr<PeerChannel> channel;  // guarded by mu
  uint64_t next_ticket = 0;              // guarded by mu
};

class NcclHandoffSender final : public HandoffSender {
 public:
  NcclHandoffSender(NcclHandoffClient& client, std::shared_ptr<NcclHandoffClient::Pair> pair,
                    std::unique_ptr<FramedConnection> connection, const NcclHandoffOptions& options)
      : client_(client),
        pair_(std::move(pair)),
        connection_(std::move(connection)),
        verdict_(*connection_),
        io_timeout_(options.io_timeout),
        rows_memory_(options.rows) {}

  using HandoffSender::Send;
  absl::Status Send(const v1::HandoffChunk& chunk, std::string_view rows_data) override {
    const std::string_view data = RowsData(chunk, rows_data);
    if (!chunk.has_rows() || data.empty()) return SendControl(chunk);
    return SendRows(WithoutRowsData(chunk), data, RowsMemory::kHost, /*seal=*/false);
  }

  absl::Status SendDeviceRows(const v1::HandoffChunk& chunk, const char* device_rows, size_t bytes) override {
    if (rows_memory_ != RowsMemory::kDevice) return HandoffSender::SendDeviceRows(chunk, device_rows, bytes);
    if (!chunk.has_rows() || bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", chunk.sequence(), " carries no rows to send"));
    }
    return SendRows(chunk, std::string_view(device_rows, bytes), RowsMemory::kDevice, /*seal=*/true);
  }

  absl::StatusOr<v1::HandoffAck> Finish() override {
    if (cancelled_) return absl::CancelledError("the handoff was cancelled");
    return verdict_.Finish(bytes_);
  }

  void Cancel() override {
    cancelled_ = true;  // a Send waiting on the GPU sees it and aborts the communicator
    connection_->Interrupt();
  }

  const HandoffByteCounts& bytes() const override { return bytes_; }

 private:
  // An early verdict is a rejection: stop before pushing rows the decode worker will discard.
  absl::Status CheckCanSend() {
    if (cancelled_) return absl::CancelledError("the handoff was cancelled");
    RETURN_IF_ERROR(verdict_.CheckCanSend());
    if (verdict_.AckWaiting()) return verdict_.TakeEarlyAck();
    return absl::OkStatus();
  }

  // A header or trailer, whole on the control connection.
  absl::Status SendControl(const v1::HandoffChunk& chunk) {
    RETURN_IF_ERROR(CheckCanSend());
    v1::NcclControl control;
    *control.mutable_chunk() = chunk;
    if (absl::Status sent = WriteControl(*connection_, control); !sent.ok()) {
      if (cancelled_) return absl::CancelledError("the handoff was cancelled");
      return verdict_.AfterFailedWrite(sent);  // the decode worker may have rejected and closed; its ack says why
    }
    CountChunkBytes(chunk, {}, kFramePrefixBytes + control.ByteSizeLong(), bytes_);
    return absl::OkStatus();
  }

  // A rows chunk (`meta`, its data field empty) whose bytes `data` lie in `memory`: the metadata on the
  // control connection with the pair's next ticket, the bytes over NCCL. With `seal`, the chunk is
  // sealed here from the bytes' CRC-32 computed on the GPU (device rows the host cannot read).
  absl::Status SendRows(v1::HandoffChunk meta, std::string_view data, RowsMemory memory, bool seal) {
    RETURN_IF_ERROR(CheckCanSend());
    v1::NcclControl control;
    absl::Status sent;
    bool control_failed = false;
    {
      std::lock_guard<std::mutex> lock(pair_->mu);
      if (pair_->dead) {
        sent = absl::UnavailableError(
            absl::StrCat("the NCCL communicator to ", pair_->address, " was aborted by an earlier failure"));
      } else {
        if (seal) {
          absl::StatusOr<uint32_t> crc =
              pair_->channel->DeviceRowsCrc32(data.data(), data.size(), absl::Now() + io_timeout_, &cancelled_);
          sent = crc.status();
          if (crc.ok()) SealChunk(meta, RowsCrc{.crc = *crc, .bytes = data.size()});
        }
        if (sent.ok()) {
          *control.mutable_chunk() = std::move(meta);
          control.mutable_payload()->set_ticket(pair_->next_ticket);
          control.mutable_payload()->set_bytes(data.size());
          sent = WriteControl(*connection_, control);
          control_failed = !sent.ok();
        }
        if (sent.ok()) {
          ++pair_->next_ticket;
          sent = pair_->channel->Send(data.data(), data.size(), memory, absl::Now() + io_timeout_, &cancelled_);
        }
        // Either way the two ends may now disagree on the tickets: this communicator is done.
        if (!sent.ok()) client_.Drop(*pair_);
      }
    }
    if (!sent.ok()) {
      if (cancelled_) return absl::CancelledError("the handoff was cancelled");
      // A control write that failed: the decode worker may have rejected and closed; its ack says why.
      return control_failed ? verdict_.AfterFailedWrite(sent) : verdict_.Fail(sent);
    }
    CountChunkBytes(control.chunk(), data, kFramePrefixBytes + control.ByteSizeLong() + data.size(), bytes_);
    return absl::OkStatus();
  }

  NcclHandoffClient& client_;
  const std::shared_ptr<NcclHandoffClient::Pair> pair_;
  const std::unique_ptr<FramedConnection> connection_;
  SenderVerdict verdict_;
  const absl::Duration io_timeout_;
  const RowsMemory rows_memory_;
  std::atomic<bool> cancelled_{false};
  HandoffByteCounts bytes_;
};

NcclHandoffClient::NcclHandoffClient(std::unique_ptr<PeerChannelFactory> channels, const NcclHandoffOptions& options)
    : options_(options), channels_(std::move(channels)) {}

NcclHandoffClient::~NcclHandoffClient() = default;

size_t NcclHandoffClient::communicators() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pairs_.size();
}

std::shared_ptr<NcclHandoffClient::Pair> NcclHandoffClient::PairFor(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Pair>& pair = pairs_[address];
  if (pair == nullptr) pair = std::make_shared<Pair>(address, NewCommunicatorName());
  return pair;
}

void NcclHandoffClient::Drop(Pair& pair) {
  if (!pair.dead) {
    pair.dead = true;
    if (pair.channel != nullptr) pair.channel->Abort();
    IC_LOG(Info) << "NCCL handoff communicator '" << pair.name << "' to " << pair.address << " aborted";
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pairs_.find(pair.address);
  if (it != pairs_.end() && it->second.get() == &pair) pairs_.erase(it);
}

absl::StatusOr<std::unique_ptr<HandoffSender>> NcclHandoffClient::Connect(const std::string& address,
                                                                          absl::Duration connect_timeout) {
  ASSIGN_OR_RETURN(HostPort target, SplitHostPort(address));
  absl::Status last;
  for (int attempt = 0; attempt < kConnectAttempts; ++attempt) {
    std::shared_ptr<Pair> pair = PairFor(address);
    auto connection = std::make_unique<FramedConnection>(options_.io_timeout);
    RETURN_IF_ERROR(connection->Connect(target.host, target.port, connect_timeout));
    RETURN_IF_ERROR(AnswerChallenge(*connection, options_.token));
    std::lock_guard<std::mutex> lock(pair->mu);
    if (pair->dead) {
      last = absl::UnavailableError(absl::StrCat("the NCCL communicator to ", address, " was aborted meanwhile"));
      continue;
    }
    v1::NcclControl open;
    open.mutable_open()->set_communicator(pair->name);
    std::string unique_id;
    if (!pair->joined) {
      ASSIGN_OR_RETURN(unique_id, channels_->NewUniqueId());
      open.mutable_open()->set_unique_id(unique_id);
    }
    absl::Status status = WriteControl(*connection, open);
    absl::StatusOr<v1::HandoffAck> ack = status.ok() ? ReadAckFrame(*connection) : status;
    status = ack.ok() ? AckStatus(*ack) : Annotate(ack.status(), "opening the NCCL handoff");
    if (status.ok() && !pair->joined) {
      absl::StatusOr<std::unique_ptr<PeerChannel>> channel =
          channels_->Join(unique_id, /*rank=*/0, absl::Now() + options_.io_timeout);
      if (channel.ok()) {
        pair->channel = *std::move(channel);
        pair->joined = true;
        IC_LOG(Info) << "NCCL handoff communicator '" << pair->name << "' to " << address << " joined";
      } else {
        status = channel.status();
      }
    }
    if (status.ok()) {
      return std::unique_ptr<HandoffSender>(
          new NcclHandoffSender(*this, pair, std::move(connection), options_));
    }
    const bool forgotten = pair->joined && absl::IsNotFound(status);
    Drop(*pair);
    if (!forgotten) return status;
    last = status;  // the decode worker restarted: make a new communicator
  }
  return last;
}

}  // namespace indexcache
