// CombineCrc32 and CombinePieceCrcs against zlib's crc32 over the whole buffer (the independent
// truth), with the pieces' CRCs also from zlib: DeviceCrc32's host half, checked without a GPU
// (tools/gpu/device_crc32_check.cu checks the kernel's piece CRCs on one).
#include "common/handoff/crc32_combine.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <random>
#include <vector>

namespace indexcache {
namespace {

std::vector<unsigned char> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> bytes(n);
  for (unsigned char& b : bytes) b = static_cast<unsigned char>(rng());
  return bytes;
}

uint32_t ZlibCrc(const unsigned char* data, size_t n) {
  // zlib's crc32 takes a uInt length; the sizes here are far below 4 GiB.
  return static_cast<uint32_t>(crc32(0, data, static_cast<uInt>(n)));
}

TEST(CombineCrc32Test, JoinsTwoPartsAtEverySplit) {
  const std::vector<unsigned char> bytes = RandomBytes(300, 1);
  for (size_t split = 0; split <= bytes.size(); ++split) {
    const uint32_t a = ZlibCrc(bytes.data(), split);
    const uint32_t b = ZlibCrc(bytes.data() + split, bytes.size() - split);
    EXPECT_EQ(CombineCrc32(a, b, bytes.size() - split), ZlibCrc(bytes.data(), bytes.size())) << "split " << split;
  }
}

TEST(CombineCrc32Test, LongSecondPart) {
  const std::vector<unsigned char> bytes = RandomBytes((5 << 20) + 7, 2);
  const size_t split = 12345;
  const uint32_t a = ZlibCrc(bytes.data(), split);
  const uint32_t b = ZlibCrc(bytes.data() + split, bytes.size() - split);
  EXPECT_EQ(CombineCrc32(a, b, bytes.size() - split), ZlibCrc(bytes.data(), bytes.size()));
}

// Each piece's CRC from zlib, as the kernel computes them (each from 0).
std::vector<uint32_t> PieceCrcs(const std::vector<unsigned char>& bytes, size_t piece_bytes) {
  std::vector<uint32_t> crcs;
  for (size_t begin = 0; begin < bytes.size(); begin += piece_bytes) {
    crcs.push_back(ZlibCrc(bytes.data() + begin, std::min(piece_bytes, bytes.size() - begin)));
  }
  return crcs;
}

TEST(CombinePieceCrcsTest, EmptyIsZero) {
  EXPECT_EQ(CombinePieceCrcs({}, 4096, 0), 0u);
  EXPECT_EQ(CombinePieceCrcs({}, 4096, 0), ZlibCrc(nullptr, 0));
}

TEST(CombinePieceCrcsTest, MatchesZlibOverTheWholeBuffer) {
  uint32_t seed = 10;
  for (size_t piece : {1, 7, 64, 4096, 8192, 16384}) {
    for (size_t size : {size_t{1}, piece - 1, piece, piece + 1, 2 * piece, 37 * piece + piece / 3 + 1,
                        size_t{1 << 20} + 3}) {
      if (size == 0) continue;
      const std::vector<unsigned char> bytes = RandomBytes(size, ++seed);
      const std::vector<uint32_t> crcs = PieceCrcs(bytes, piece);
      ASSERT_EQ(crcs.size(), (size + piece - 1) / piece);
      EXPECT_EQ(CombinePieceCrcs(crcs, piece, size), ZlibCrc(bytes.data(), size))
          << "piece " << piece << ", " << size << " bytes";
    }
  }
}

TEST(CombinePieceCrcsTest, ManyPiecesAndATail) {
  const size_t piece = 8192;
  const size_t size = (64 << 20) + 4097;  // 8193 pieces, the last one 4097 bytes
  const std::vector<unsigned char> bytes = RandomBytes(size, 99);
  EXPECT_EQ(CombinePieceCrcs(PieceCrcs(bytes, piece), piece, size), ZlibCrc(bytes.data(), size));
}

TEST(CombinePieceCrcsTest, ChangedPieceChangesTheResult) {
  const size_t piece = 4096;
  std::vector<unsigned char> bytes = RandomBytes(10 * piece + 5, 7);
  const uint32_t before = CombinePieceCrcs(PieceCrcs(bytes, piece), piece, bytes.size());
  bytes[5 * piece + 17] ^= 0x40;
  EXPECT_NE(CombinePieceCrcs(PieceCrcs(bytes, piece), piece, bytes.size()), before);
}

}  // namespace
}  // namespace indexcache
