// CRC-32 (zlib's polynomial) of a buffer from the CRC-32s of its parts, so the parts can be summed in
// parallel (DeviceCrc32: one GPU thread per piece) and joined on the host. zlib's combine is a
// multiplication in GF(2)[x] mod the polynomial: crc(A‖B) = crc(A)·x^(8·len(B)) ⊕ crc(B).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace indexcache {

// The CRC-32 of A‖B, given crc1 = crc32(A), crc2 = crc32(B) and len2 = len(B) (each from 0).
uint32_t CombineCrc32(uint32_t crc1, uint32_t crc2, size_t len2);

// The CRC-32 of a buffer of `total_bytes` cut into consecutive pieces of `piece_bytes` (the last one
// shorter when total_bytes is not a multiple), given each piece's own CRC-32 (from 0):
// piece_crcs.size() is ceil(total_bytes / piece_bytes). total_bytes == 0 → 0. A span shorter than
// that combines only the pieces it has (a wrong CRC the receiver rejects, never a read past it).
uint32_t CombinePieceCrcs(absl::Span<const uint32_t> piece_crcs, size_t piece_bytes, size_t total_bytes);

}  // namespace indexcache
