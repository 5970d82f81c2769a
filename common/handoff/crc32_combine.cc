#include "common/handoff/crc32_combine.h"

#include <zlib.h>

#include <algorithm>

namespace indexcache {

uint32_t CombineCrc32(uint32_t crc1, uint32_t crc2, size_t len2) {
  return static_cast<uint32_t>(crc32_combine64(crc1, crc2, static_cast<z_off64_t>(len2)));
}

uint32_t CombinePieceCrcs(absl::Span<const uint32_t> piece_crcs, size_t piece_bytes, size_t total_bytes) {
  if (total_bytes == 0 || piece_bytes == 0 || piece_crcs.empty()) return 0;
  const size_t full_pieces = std::min(total_bytes / piece_bytes, piece_crcs.size());
  const size_t tail_bytes = total_bytes % piece_bytes;
  if (full_pieces == 0) return piece_crcs[0];  // one short piece: its CRC is the buffer's
  // Every full piece shifts the running CRC by the same length, so the shift (x^(8·piece_bytes) mod
  // the polynomial) is computed once; crc32_combine_op is then one 32×32 carry-less product per piece,
  // where crc32_combine64 would recompute the power by repeated squaring each time.
  const uLong shift = crc32_combine_gen64(static_cast<z_off64_t>(piece_bytes));
  uLong crc = piece_crcs[0];
  for (size_t i = 1; i < full_pieces; ++i) crc = crc32_combine_op(crc, piece_crcs[i], shift);
  if (tail_bytes > 0 && full_pieces < piece_crcs.size()) {
    crc = crc32_combine64(crc, piece_crcs[full_pieces], static_cast<z_off64_t>(tail_bytes));
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace indexcache
