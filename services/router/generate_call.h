// One client Generate request carried through the cluster:
//   wait in the admission queue until a decode worker D has the KV blocks and a prefill worker P the
//   room the request needs, each then picked by power of two choices on load (admission_queue.h) →
//   open D.Decode and wait for `admitted` (D holds KV blocks for the prompt) →
//   P.Prefill with D's handoff address (P pushes the cache to D while it computes) →
//   relay D's token stream to the client → a final message with the timings and workers.
// Both worker calls inherit the client's deadline and cancellation (ClientContext::FromServerContext).
// When an attempt fails before any token reached the client, it is retried once as a fresh request on
// other workers; after a token, the stream ends UNAVAILABLE naming the worker. A worker that answers
// RESOURCE_EXHAUSTED (it filled up between two load reports) sends the request back to its place in the
// queue. A failed, refused, cancelled or aborted attempt sends Abort to both of its workers so that
// neither keeps the request's KV blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "indexcache/v1/generate.pb.h"
#include "indexcache/v1/internal.pb.h"
#include "services/router/admission_queue.h"
#include "services/router/request_table.h"
#include "services/router/router_metrics.h"
#include "services/router/worker_registry.h"

namespace indexcache {

struct DispatchOptions {
  v1::HandoffTransport transport = v1::HANDOFF_TRANSPORT_GRPC;
  absl::Duration abort_timeout = absl::Seconds(1);  // for the Abort calls that free a failed attempt's KV
  std::string index_pattern;  // the checkpoint's, reported when neither the workers nor the pool name one
};

class GenerateCall {
 public:
  // `prompt` passed the front door; `deadline` is the client's, or the router's default. `metrics`
  // receives the queue time and every relayed token's latency.
  GenerateCall(WorkerRegistry* registry, AdmissionQueue& queue, const DispatchOptions& options,
               RouterMetrics& metrics, std::shared_ptr<RequestHandle> request,
               grpc::ServerContext* server_context, grpc::ServerWriter<v1::GenerateResponse>* writer,
               const v1::GenerateRequest& client_request, std::vector<int32_t> prompt, absl::Time arrival,
               absl::Time deadline);

  // Runs the request to its end; the status is the client stream's.
  grpc::Status Run();

 private:
  enum class Blame { kDecode, kPrefill };
  // How one attempt ended.
  struct Outcome {
    absl::Status status;       // OK: the final message was sent
    Blame blame = Blame::kDecode;
  };

  Outcome RunAttempt(WorkerLease& decode, WorkerLease& prefill, const std::string& worker_request_id);
  // Relays D's stream after the prefill, then sends the final message.
  Outcome RelayTokens(grpc::ClientReaderInterface<v1::DecodeResponse>& stream, grpc::ClientContext& decode_call,
                      const WorkerLease& decode, const WorkerLease& prefill, const v1::PrefillResponse& prefill_result);
  void AbortOnWorkers(const WorkerLease& decode, const WorkerLease& prefill, const std::string& worker_request_id);
  std::unique_ptr<grpc::ClientContext> NewWorkerCall();
  bool ClientGone() const;
  // Why waiting in the queue must stop (CANCELLED: aborted, or the client went away); OK: wait on.
  absl::Status Interrupted() const;
  void SendAbortFinal();

  WorkerRegistry* const registry_;
  AdmissionQueue& queue_;
  const DispatchOptions& options_;
  RouterMetrics& metrics_;
  const std::shared_ptr<RequestHandle> request_;
  grpc::ServerContext* const server_context_;
  grpc::ServerWriter<v1::GenerateResponse>* const writer_;
  const v1::GenerateRequest& client_request_;
  const std::vector<int32_t> prompt_;
  const absl::Time arrival_;
  const absl::Time deadline_;

  // Progress of the current attempt, for the final message.
  int32_t tokens_sent_ = 0;
  absl::Time prefill_start_;
  bool queue_observed_ = false;  // the queue time counts once, for the dispatch whose prefill ran
  absl::Time first_token_;
  absl::Time last_token_;
};

}  // namespace indexcache
