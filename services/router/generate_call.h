// One client Generate request carried through the cluster:
//   wait in the admission queue until a decode worker D has the KV blocks and a prefill worker P the
//   room the request needs, each then picked by power of two choices on load (admission_queue.h) →
//   open D.Decode and wait for `admitted` (D holds KV blocks for the prompt) →
//   P.Prefill with D's handoff address (P pushes the cache to D while it computes, and streams the
//   first token back as soon as it is sampled: relayed to the client at once, prefill_call.h) →
//   relay D's token stream (from the second token on) to the client → a final message with the
//   timings and workers.
// Both worker calls inherit the client's deadline and cancellation (ClientContext::FromServerContext).
// The prefill runs beside the decode stream, whose `progress` messages (rows received) and tokens are
// the attempt's signs of life: an attempt without progress for the stage timeout is cancelled
// (stall_monitor.h) and blamed on the decode worker when it went silent, on the prefill worker when
// the decode worker kept reporting but no rows came. When an attempt fails before any token reached
// the client, it is retried once as a fresh request on other workers. After a token, the stream
// migrates (NVIDIA Dynamo's --migration-limit): the next attempt, on a pair without the blamed worker,
// prefills the prompt plus every token already streamed, marked `resumed_tokens` so that the decode
// worker's detokenizer, stop strings and sampler continue where the dead one left off, with
// max_new_tokens reduced by what was produced; its tokens continue the same client stream, none lost
// or repeated (greedy output is the undisturbed one). Past `migration_limit` moves, or with no worker
// left, the stream ends UNAVAILABLE naming the worker and the tokens streamed. A worker that answers
// RESOURCE_EXHAUSTED (it filled up between two load reports) sends the request back to its place in the
// queue. A failed, refused, cancelled or aborted attempt sends Abort to both of its workers so that
// neither keeps the request's KV blocks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "indexcache/v1/generate.pb.h"
#include "common/model/model_config.h"
#include "indexcache/v1/internal.pb.h"
#include "services/router/admission_queue.h"
#include "services/router/prefill_call.h"
#include "services/router/request_table.h"
#include "services/router/router_metrics.h"
#include "services/router/stall_monitor.h"
#include "services/router/worker_registry.h"

namespace indexcache {

struct DispatchOptions {
  v1::HandoffTransport transport = v1::HANDOFF_TRANSPORT_GRPC;
  absl::Duration abort_timeout = absl::Seconds(1);  // for the Abort calls that free a failed attempt's KV
  std::string index_pattern;  // the checkpoint's, reported when neither the workers nor the pool name one
  // Stage timeouts: attempts without progress for its timeout are cancelled. Outlives every call.
  StallMonitor* stall_monitor = nullptr;
  // How many times one stream may migrate after tokens reached its client; 0: never.
  int migration_limit = 3;
  // The served model, for the prefill work a prompt demands (common/model/prefill_cost.h), under the
  // pool's pattern when it has one. Null: prefill workers are compared by tokens alone. Outlives every call.
  const ModelConfig* model = nullptr;
};

class GenerateCall {
 public:
  // `prompt` passed the front door; `deadline` is the client's, or the router's default. `metrics`
  // receives the queue time and every relayed token's latency. A request with n choices runs one call
  // per `choice` (0 … n-1), each with its own `client_request` (its seed) and `writer` (choice_stream.h).
  GenerateCall(WorkerRegistry* registry, AdmissionQueue& queue, const DispatchOptions& options,
               RouterMetrics& metrics, std::shared_ptr<RequestHandle> request, int choice,
               grpc::ServerContext* server_context, grpc::ServerWriterInterface<v1::GenerateResponse>* writer,
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
    bool stalled = false;      // the stage timeout cancelled the attempt
  };

  // How D's stream ended.
  struct Relayed {
    absl::Status status;  // the stream's status
    std::optional<v1::FinalInfo> final;
  };

  Outcome RunAttempt(WorkerLease& decode, WorkerLease& prefill, const std::string& worker_request_id);
  // The modelled prefill work of a prompt's first n tokens (common/model/prefill_cost.h), under the
  // pool's pattern; null without DispatchOptions::model.
  std::function<int64_t(int64_t)> WorkModel() const;
  // What the workers of the next attempt are asked: the client's prompt plus the tokens already
  // streamed (resumed_tokens of them), and the client's sampling with max_new_tokens reduced by them.
  v1::DecodeRequest NextDecodeRequest(const std::string& worker_request_id) const;
  // The stream's end when `failure` came after tokens were streamed and the stream cannot move
  // (`why_not_moved`): UNAVAILABLE, or the failure's own code when another worker would fail the same
  // way, naming the worker and the tokens streamed.
  grpc::Status StreamBroken(const absl::Status& failure, const std::string& why_not_moved) const;
  // Reads D's stream to its end, relaying its tokens to the client as they come, after P's first token
  // (`prefill`: null when the prefill call never started); every sign of progress goes to `watch`.
  Relayed RelayTokens(grpc::ClientReaderInterface<v1::DecodeResponse>& stream, grpc::ClientContext& decode_call,
                      StallMonitor::Watch& watch, PrefillCall* prefill);
  // P's first token to the client (on the prefill call's thread); false: the client stream closed.
  bool RelayFirstToken(const v1::FirstToken& first);
  // Writes `chunk` to the client and records its tokens; false: the client stream closed. One writer
  // at a time: P's first token is relayed before RelayTokens relays anything of D's.
  bool Relay(const v1::GenerateResponse& chunk);
  // Which worker a stalled attempt is blamed on, and why; `handed_off`: the prefill returned OK.
  Outcome Stalled(bool handed_off) const;
  void SendFinal(const v1::FinalInfo& final, const WorkerLease& decode, const WorkerLease& prefill,
                 const v1::PrefillDone& prefill_result);
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
  const int choice_;
  grpc::ServerContext* const server_context_;
  grpc::ServerWriterInterface<v1::GenerateResponse>* const writer_;
  const v1::GenerateRequest& client_request_;
  const std::vector<int32_t> prompt_;
  const absl::Time arrival_;
  const absl::Time deadline_;

  // Every token relayed to the client, over all attempts: what a migrated attempt resumes from.
  std::vector<int32_t> streamed_;
  int32_t max_new_tokens_ = 0;  // the client's
  int migrations_ = 0;
  // Progress of the current attempt, for the final message.
  int32_t attempt_tokens_ = 0;  // tokens this attempt relayed
  int32_t decode_tokens_ = 0;   // of those, from D's stream (the first one comes from P)
  absl::Time prefill_start_;
  bool queue_observed_ = false;  // the queue time counts once, for the dispatch whose prefill ran
  absl::Time first_token_;
  absl::Time last_token_;
  bool admitted_ = false;          // D answered `admitted`
  absl::Time last_decode_message_;  // when D last sent anything: it is alive
};

}  // namespace indexcache
