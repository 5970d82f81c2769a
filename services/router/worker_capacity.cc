#include "services/router/worker_capacity.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

int64_t BlocksFor(int64_t tokens, int64_t block_size) { return (tokens + block_size - 1) / block_size; }

int64_t KvBlocksInUse(const WorkerLedger& ledger) { return ledger.others_kv_blocks + ledger.kv_blocks; }

int64_t QueuedPromptTokens(const WorkerLedger& ledger) { return ledger.others_prompt_tokens + ledger.prompt_tokens; }

constexpr char kRefused[] = "it refused a request for lack of room since its last load report";

}  // namespace

void WorkerLedger::Enter(const LedgerShare& share) {
  prompt_tokens += share.prompt_tokens;
  prefill_flops += share.prefill_flops;
  kv_blocks += share.kv_blocks;
  sequences += share.sequences;
  peak_sequences = std::max(peak_sequences, sequences);
  peak_prompt_tokens = std::max(peak_prompt_tokens, prompt_tokens);
  peak_prefill_flops = std::max(peak_prefill_flops, prefill_flops);
  peak_kv_blocks = std::max(peak_kv_blocks, kv_blocks);
}

void WorkerLedger::Leave(const LedgerShare& share) {
  prompt_tokens -= share.prompt_tokens;
  prefill_flops -= share.prefill_flops;
  kv_blocks -= share.kv_blocks;
  sequences -= share.sequences;
}

void WorkerLedger::Reported(const v1::WorkerLoad& load) {
  if (load.role() == v1::DECODE) {
    const int64_t used = int64_t{load.total_kv_blocks()} - load.free_kv_blocks();
    others_kv_blocks = std::max<int64_t>(0, used - peak_kv_blocks);
    others_sequences = std::max<int64_t>(0, int64_t{load.running_sequences()} - peak_sequences);
  } else {
    others_prompt_tokens = std::max<int64_t>(0, load.queued_prompt_tokens() - peak_prompt_tokens);
    others_prefill_flops =
        std::max<int64_t>(0, static_cast<int64_t>(load.queued_prefill_flops()) - peak_prefill_flops);
  }
  peak_sequences = sequences;
  peak_kv_blocks = kv_blocks;
  peak_prompt_tokens = prompt_tokens;
  peak_prefill_flops = prefill_flops;
  refused = false;
}

int64_t KvBlocksToAdmit(const v1::WorkerLoad& load, const Demand& demand) {
  if (load.kv_block_size() <= 0) return 0;
  return BlocksFor(demand.prompt_tokens + 1, load.kv_block_size());
}

FitVerdict DecodeFit(const v1::WorkerLoad& load, const WorkerLedger& ledger, const Demand& demand) {
  const int64_t block_size = load.kv_block_size();
  const int64_t total = load.total_kv_blocks();
  if (block_size <= 0 || total <= 0) return {};
  const int64_t whole = demand.prompt_tokens + demand.max_new_tokens;
  if (BlocksFor(whole, block_size) > total) {
    return {Fit::kNever, absl::StrFormat("prompt + max_new_tokens (%d tokens) exceed its whole KV cache (%d tokens)",
                                         whole, total * block_size)};
  }
  if (ledger.refused) return {Fit::kLater, kRefused};
  const int64_t free = total - KvBlocksInUse(ledger);
  const int64_t need = KvBlocksToAdmit(load, demand);
  if (need > free) {
    return {Fit::kLater, absl::StrFormat("%d of its %d KV blocks are free, %d needed", std::max<int64_t>(free, 0),
                                         total, need)};
  }
  return {};
}

FitVerdict PrefillFit(const v1::WorkerLoad& load, const WorkerLedger& ledger, const Demand& demand) {
  if (load.kv_block_size() > 0 && load.total_kv_blocks() > 0 &&
      BlocksFor(demand.prompt_tokens, load.kv_block_size()) > load.total_kv_blocks()) {
    return {Fit::kNever, absl::StrFormat("the prompt (%d tokens) exceeds its whole KV cache (%d tokens)",
                                         demand.prompt_tokens, int64_t{load.total_kv_blocks()} * load.kv_block_size())};
  }
  const int64_t bound = load.max_queued_prompt_tokens();
  if (bound <= 0) return {};
  if (ledger.refused) return {Fit::kLater, kRefused};
  const int64_t queued = QueuedPromptTokens(ledger);
  // A prompt longer than the bound still goes to an idle worker, as the worker's own admission allows.
  if (queued > 0 && queued + demand.prompt_tokens > bound) {
    return {Fit::kLater, absl::StrFormat("%d prompt tokens are queued there, %d more would pass its bound of %d",
                                         queued, demand.prompt_tokens, bound)};
  }
  return {};
}

LoadKey DecodeLoadKey(const v1::WorkerLoad& load, const WorkerLedger& ledger) {
  // Without a block size the ledger promises no blocks: the report's free blocks are the estimate.
  const int64_t free = load.kv_block_size() > 0 ? load.total_kv_blocks() - KvBlocksInUse(ledger)
                                                : int64_t{load.free_kv_blocks()};
  // The report's running sequences count this router's own too, and may predate their end: only what
  // lies beyond them is added to the ledger's (a burst after a busy spell would otherwise all go to
  // the other worker, which looked idler by the sequences that had already finished).
  return {ledger.others_sequences + ledger.sequences, -free};
}

LoadKey PrefillLoadKey(const WorkerLedger& ledger) {
  // The work queued, not the tokens: a prompt's indexer work grows with its square (prefill_cost.h).
  return {ledger.others_prefill_flops + ledger.prefill_flops, QueuedPromptTokens(ledger)};
}

}  // namespace indexcache
