#include "common/tokenizer/incremental_decoder.h"

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/tokenizer/byte_unicode.h"

namespace indexcache {
namespace {

using ::testing::ElementsAre;

// One token per byte (spellings of 0x00..0xFF), so a multi-byte character arrives in pieces, plus
// one special token.
std::unique_ptr<BpeTokenizer> ByteTokenizer() {
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    std::string spelling = BytesToByteLevel(std::string(1, static_cast<char>(b)));
    if (spelling == "\"" || spelling == "\\") spelling = "\\" + spelling;
    vocab += (b ? ", \"" : "\"") + spelling + "\": " + std::to_string(b);
  }
  const std::string spec = R"({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
      "decoder": {"type": "ByteLevel"},
      "added_tokens": [{"id": 256, "content": "<eos>", "special": true}],
      "model": {"type": "BPE", "merges": [], "vocab": {)" + vocab + "}}}";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromJson(spec);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

bool IsValidUtf8(std::string_view s) { return Utf8Lossy(s) == s; }

// Feeds ids one by one; checks every chunk is valid UTF-8; returns the chunks (flush last).
std::vector<std::string> Stream(const BpeTokenizer& tok, const std::vector<int32_t>& ids,
                                bool skip_special = false) {
  IncrementalDecoder decoder(&tok, skip_special);
  std::vector<std::string> chunks;
  for (int32_t id : ids) {
    absl::StatusOr<std::string> chunk = decoder.Push(id);
    EXPECT_TRUE(chunk.ok()) << chunk.status();
    chunks.push_back(chunk.value_or(""));
    EXPECT_TRUE(IsValidUtf8(chunks.back()));
  }
  chunks.push_back(decoder.Flush());
  return chunks;
}

TEST(IncrementalDecoderTest, HoldsBackPartialCharacters) {
  auto tok = ByteTokenizer();
  ASSERT_NE(tok, nullptr);
  // "é" = C3 A9 and "😀" = F0 9F 98 80: nothing comes out until the last byte of each.
  EXPECT_THAT(Stream(*tok, {'a', 0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 'b'}),
              ElementsAre("a", "", "\u00E9", "", "", "", "\U0001F600", "b", ""));
}

TEST(IncrementalDecoderTest, IllFormedBytesBecomeReplacementCharacters) {
  auto tok = ByteTokenizer();
  ASSERT_NE(tok, nullptr);
  // E2 82 cannot be completed by 'z': one U+FFFD for the two bytes, then 'z'. A trailing F0 is
  // held until the end, then flushed as U+FFFD.
  EXPECT_THAT(Stream(*tok, {0xE2, 0x82, 'z', 0x80, 0xF0}),
              ElementsAre("", "", "\uFFFDz", "\uFFFD", "", "\uFFFD"));
}

TEST(IncrementalDecoderTest, SkipsSpecialTokensAndRefusesBadIds) {
  auto tok = ByteTokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(Stream(*tok, {'a', 256, 'b'}, /*skip_special=*/true), ElementsAre("a", "", "b", ""));
  EXPECT_THAT(Stream(*tok, {'a', 256}), ElementsAre("a", "<eos>", ""));
  IncrementalDecoder decoder(tok.get());
  ASSERT_EQ(decoder.Push(0xC3).value(), "");
  EXPECT_FALSE(decoder.Push(257).ok());
  EXPECT_EQ(decoder.Push(0xA9).value(), "\u00E9");  // the refused id changed nothing
}

// Random id sequences: the chunks always concatenate to the lossy decode of all ids, which is
// Decode(ids) itself whenever that is valid UTF-8 (as for ids from Encode).
TEST(IncrementalDecoderTest, ChunksConcatenateToDecode) {
  auto bytes = ByteTokenizer();
  ASSERT_NE(bytes, nullptr);
  std::vector<const BpeTokenizer*> tokenizers = {bytes.get()};
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> fixture = BpeTokenizer::FromFile(
      std::string(INDEXCACHE_TEST_DATA) + "/../tokenizer/testdata/glm_style_tokenizer.json");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  tokenizers.push_back(fixture->get());

  std::mt19937 rng(3);
  for (const BpeTokenizer* tok : tokenizers) {
    // Ids from Encode: exact equality.
    for (const char* text : {"Hello, 世界! 😀👍🏽 naïve", "👨‍👩‍👧‍👦🇫🇷 ❤️ end", "ascii only"}) {
      const std::vector<int32_t> ids = tok->Encode(text);
      std::string all;
      for (const std::string& chunk : Stream(*tok, ids)) all += chunk;
      EXPECT_EQ(all, tok->Decode(ids).value());
      EXPECT_EQ(all, text);
    }
    // Arbitrary ids: lossy equality.
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 30; ++i) {
        int32_t id;
        do {
          id = static_cast<int32_t>(rng() % tok->vocab_size());
        } while (!tok->Decode(std::vector<int32_t>{id}).ok());
        ids.push_back(id);
      }
      std::string all;
      for (const std::string& chunk : Stream(*tok, ids)) all += chunk;
      EXPECT_EQ(all, Utf8Lossy(tok->Decode(ids).value()));
    }
  }
}

}  // namespace
}  // namespace indexcache
