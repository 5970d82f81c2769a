#include "services/common/cached_blocks_proto.h"

namespace indexcache {

void SetCachedBlocks(const CachedBlocksReport& report, ::indexcache::v1::WorkerLoad* load) {
  if (!report.enabled) return;
  ::indexcache::v1::CachedBlocks* out = load->mutable_cached_blocks();
  const CachedBlocksUpdate& update = report.update;
  out->set_epoch(update.epoch);
  out->set_version(update.version);
  out->set_snapshot(update.snapshot);
  out->set_since_version(update.since_version);
  out->mutable_stored()->Add(update.stored.begin(), update.stored.end());
  out->mutable_removed()->Add(update.removed.begin(), update.removed.end());
  out->set_block_size(report.block_size);
  out->set_seed(report.seed.data(), report.seed.size());
  for (const LengthSeed& s : report.length_seeds) {
    ::indexcache::v1::LengthSeed* length_seed = out->add_length_seeds();
    length_seed->set_min_prompt_tokens(s.min_prompt_tokens);
    length_seed->set_seed(s.seed.data(), s.seed.size());
  }
}

}  // namespace indexcache
