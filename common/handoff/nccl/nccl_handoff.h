// The NCCL handoff transport: cache rows go GPU to GPU (prefill worker's GPU → decode worker's GPU
// on one host) through a two-rank NCCL communicator per (prefill, decode) pair; everything else —
// which communicator, the chunks' metadata (request, sequence, CRC-32, layer, positions), header,
// trailer and the verdict — travels on a control connection in the TCP data plane's frames
// (tcp/tcp_frame.h), one connection per handoff, with NcclControl messages
// (proto/indexcache/v1/internal.proto).
//
// A control connection starts with NcclOpen naming the pair's communicator; the first handoff of a
// pair also carries a fresh ncclUniqueId, the decode worker answers with an ack frame, and both ends
// join the communicator (the id travels on the control plane, never through a file or a store). Then,
// per chunk: header and trailer whole in a control frame; a rows chunk's metadata in a control frame
// with an NcclPayload {ticket, bytes}, its bytes right after by ncclSend → ncclRecv (from and into
// device memory when the engines' rows lie there, NcclHandoffOptions::rows), after which the
// decode worker hands the reassembled chunk to its HandoffSink — the same checks (CRC-32, sequence,
// fingerprint/pattern via the header, rows continuity, trailer probes) and the same rejection acks as
// the other transports.
//
// Concurrent handoffs share the pair's communicator. NCCL matches sends and receives by order, so
// every send takes the pair's next ticket under the pair's lock, and the decode worker receives in
// ticket order whatever connection a ticket arrives on. After its verdict, the decode worker keeps
// receiving the tickets of frames still arriving, so a rejection never strands a sender in ncclSend.
// Any failure on the GPU path (timeout, cancel, a peer gone, a protocol error) aborts the pair's
// communicator at both ends (ncclCommAbort, through PeerChannel) and the next handoff makes a new one.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/cluster_token.h"
#include "common/handoff/handoff_transport.h"
#include "common/handoff/nccl/nccl_channel.h"

namespace indexcache {

class FramedConnection;
class TcpHandoffServer;

struct NcclHandoffOptions {
  // Bound on every control read and write, on joining a communicator, on each GPU transfer and on a
  // receiver's wait for the ticket before its own: a peer silent that long is treated as gone.
  absl::Duration io_timeout = absl::Seconds(60);
  // Proved on every control connection before its first message (tcp/handshake.h); none: no
  // handshake. (`{}`: designated initializers that leave it out raise no -Wmissing-field-initializers.)
  ClusterToken token{};
  // Where this worker's rows lie. kDevice when the worker's engine runs on the communicators' GPU:
  // the prefill side sends from the engine's device staging (SendDeviceRows) and the decode side
  // receives into its sink's device area (LandRows kDevice), each checksummed on the GPU — no host
  // copy at either end. kHost: rows are staged through a device buffer of the channel.
  RowsMemory rows = RowsMemory::kHost;
};

// Where a worker's NCCL handoff moves rows: straight from and into device memory when its engine runs
// on the communicators' GPU (`engine_cuda_device`, -1 off the GPU, equal to `nccl_gpu`), else host
// memory staged through the channel's device buffer.
inline RowsMemory NcclRowsMemory(int engine_cuda_device, int nccl_gpu) {
  return engine_cuda_device >= 0 && engine_cuda_device == nccl_gpu ? RowsMemory::kDevice : RowsMemory::kHost;
}

// Decode-worker side: the control endpoint, and the communicators prefill workers opened to it.
class NcclHandoffServer {
 public:
  // Listens on `host`:`port` (an IP address; port 0 picks a free one); chunks go to `sink`, which
  // must outlive the server. `channels` joins communicators on this worker's GPU.
  static absl::StatusOr<std::unique_ptr<NcclHandoffServer>> Start(const std::string& host, int port, HandoffSink* sink,
                                                                  std::unique_ptr<PeerChannelFactory> channels,
                                                                  const NcclHandoffOptions& options = {});
  ~NcclHandoffServer();  // Shutdown()
  NcclHandoffServer(const NcclHandoffServer&) = delete;
  NcclHandoffServer& operator=(const NcclHandoffServer&) = delete;

  // "ip:port" as bound.
  const std::string& address() const;
  // Aborts every communicator, breaks the open connections (the sink sees each handoff broken) and
  // waits for their handlers to return. Idempotent.
  void Shutdown();
  // Live communicators (joined or joining).
  size_t communicators() const;

  class Communicators;  // the registry; in nccl_handoff.cc

 private:
  NcclHandoffServer(HandoffSink* sink, std::unique_ptr<PeerChannelFactory> channels,
                    const NcclHandoffOptions& options);
  // One control connection, from its NcclOpen to the end of its drain.
  void Serve(FramedConnection& connection);

  HandoffSink* sink_;
  const NcclHandoffOptions options_;
  std::unique_ptr<PeerChannelFactory> channels_;
  std::unique_ptr<Communicators> communicators_;
  std::unique_ptr<TcpHandoffServer> control_;
};

// Prefill-worker side, the transport's entry in a worker's HandoffTransports: opens NCCL handoffs,
// making each decode worker's communicator on first use and keeping it for the next handoffs
// (needs_peer_setup). Must outlive the senders it returns.
class NcclHandoffClient final : public HandoffConnector {
 public:
  NcclHandoffClient(std::unique_ptr<PeerChannelFactory> channels, const NcclHandoffOptions& options = {});
  ~NcclHandoffClient() override;
  NcclHandoffClient(const NcclHandoffClient&) = delete;
  NcclHandoffClient& operator=(const NcclHandoffClient&) = delete;

  v1::HandoffTransport transport() const override { return v1::HANDOFF_TRANSPORT_NCCL; }
  std::string_view name() const override { return "nccl"; }
  // device_memory when the rows lie on the GPU (NcclHandoffOptions::rows).
  HandoffCapabilities capabilities() const override {
    return {.device_memory = options_.rows == RowsMemory::kDevice, .needs_peer_setup = true};
  }
  // A handoff to the decode worker whose NCCL control endpoint is `address` ("ip:port").
  absl::StatusOr<std::unique_ptr<HandoffSender>> Connect(const std::string& address,
                                                         absl::Duration connect_timeout) override;
  // Communicators held now (one per decode worker reached, until a failure aborts one).
  size_t communicators() const;

  struct Pair;  // one decode worker's communicator; in nccl_handoff.cc

 private:
  friend class NcclHandoffSender;
  std::shared_ptr<Pair> PairFor(const std::string& address);
  // Aborts `pair`'s communicator and forgets it (the caller holds pair.mu).
  void Drop(Pair& pair);

  const NcclHandoffOptions options_;
  std::unique_ptr<PeerChannelFactory> channels_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Pair>> pairs_;  // guarded by mu_, by address
};

}  // namespace indexcache
