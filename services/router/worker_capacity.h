// What the router believes one worker can still take, for admission (admission_queue.h).
//
// A worker reports its load every heartbeat (or probe); between two reports the router dispatches
// more. So the estimate is the router's own ledger — what it dispatched there and has not finished —
// plus what the last report showed beyond that ledger (other routers' requests, decode growth):
//
//   prefill: queued prompt tokens = others_prompt_tokens + ledger.prompt_tokens
//   decode:  KV blocks in use     = others_kv_blocks     + ledger.kv_blocks
//   others_* = reported − the ledger's peak since the previous report, clamped at 0
//
// The peak, not the ledger when the report arrives: a report is built before it arrives, and a
// request of ours that finished in between would otherwise count as someone else's until the next
// report, holding the queue up for a heartbeat. The worker built the report after the previous one
// was recorded, so its view of our requests is at most that peak.
//
// The ledger moves at once when this router dispatches or finishes a request, so a burst spreads
// over the workers and a finished request frees room without waiting for the next heartbeat. The
// estimate can be short (a request in transit at the report): the worker then answers
// RESOURCE_EXHAUSTED, and the ledger marks it `refused` until its next report.
//
// A decode worker is promised the blocks it reserves at admission (Engine::AdmitImport: prompt + 1
// tokens); a request never fits it when prompt + max_new_tokens exceeds its whole cache. A prefill
// worker takes prompts while its queued tokens stay within its bound, and a prompt of any length when
// it has nothing queued (PrefillService::Admit); a prompt never fits it when it exceeds its KV cache.
// A worker that reports no block size or bound (an older build) is not gated: it decides itself.
#pragma once

#include <cstdint>
#include <string>

#include "indexcache/v1/internal.pb.h"
#include "services/router/load_balancer.h"

namespace indexcache {

class PromptBlocks;

// What one request asks of the cluster.
struct Demand {
  int64_t prompt_tokens = 0;
  int64_t max_new_tokens = 0;
  int64_t prefill_flops = 0;  // the prompt's modelled prefill work (common/model/prefill_cost.h)
  // The prompt's block keys, for prefix-aware placement (prompt_blocks.h); null: load alone decides.
  PromptBlocks* prompt = nullptr;
  // The prompt as its client sent it, without the tokens a migrated request streamed before (0: all of
  // prompt_tokens): its length picks an adaptive pattern, hence the seed its blocks chain from.
  int64_t client_prompt_tokens = 0;
  int64_t PatternLength() const { return client_prompt_tokens > 0 ? client_prompt_tokens : prompt_tokens; }
};

// What one request adds to a worker's ledger while it is dispatched there.
struct LedgerShare {
  int64_t prompt_tokens = 0;  // prefill
  int64_t prefill_flops = 0;  // prefill
  int64_t kv_blocks = 0;      // decode
  int64_t sequences = 0;      // decode
};

// This router's account of one worker.
struct WorkerLedger {
  // Requests dispatched there and not finished: running sequences and KV blocks promised (decode),
  // prompt tokens and their prefill work (prefill).
  int64_t sequences = 0;
  int64_t kv_blocks = 0;
  int64_t prompt_tokens = 0;
  int64_t prefill_flops = 0;
  // The ledger's peaks since the last report.
  int64_t peak_sequences = 0;
  int64_t peak_kv_blocks = 0;
  int64_t peak_prompt_tokens = 0;
  int64_t peak_prefill_flops = 0;
  // The last report's load beyond this router's requests.
  int64_t others_sequences = 0;
  int64_t others_kv_blocks = 0;
  int64_t others_prompt_tokens = 0;
  int64_t others_prefill_flops = 0;
  // The worker answered RESOURCE_EXHAUSTED since its last report: no more until the next one.
  bool refused = false;

  // A request enters (dispatched) or leaves (finished) the ledger.
  void Enter(const LedgerShare& share);
  void Leave(const LedgerShare& share);
  // A load report arrived: re-derives `others_*`, restarts the peaks and clears `refused`.
  void Reported(const ::indexcache::v1::WorkerLoad& load);
};

enum class Fit { kNow, kLater, kNever };

struct FitVerdict {
  Fit fit = Fit::kNow;
  std::string why;  // kLater / kNever: what stands in the way, for messages ("3 of 40 KV blocks free")
};

// Whether `demand` can start on the worker of `load` now, later, or never.
FitVerdict DecodeFit(const ::indexcache::v1::WorkerLoad& load, const WorkerLedger& ledger, const Demand& demand);
FitVerdict PrefillFit(const ::indexcache::v1::WorkerLoad& load, const WorkerLedger& ledger, const Demand& demand);

// The KV blocks a decode worker reserves when it admits `demand` (0 when it reports no block size).
int64_t KvBlocksToAdmit(const ::indexcache::v1::WorkerLoad& load, const Demand& demand);

// The worker's load as the balancer compares it (load_balancer.h), from the same estimates.
LoadKey DecodeLoadKey(const ::indexcache::v1::WorkerLoad& load, const WorkerLedger& ledger);
LoadKey PrefillLoadKey(const WorkerLedger& ledger);

}  // namespace indexcache
