// Expected values come from the GPT-2 byte map as published (vocab spellings like "Ġ" for a space,
// "Ċ" for a newline, "Ń" for byte 0xAD) and from the Unicode standard's UTF-8 tables.
#include "common/tokenizer/byte_unicode.h"

#include <set>
#include <string>

#include <gtest/gtest.h>

namespace indexcache {
namespace {

TEST(ByteUnicodeTest, KnownSpellings) {
  EXPECT_EQ(ByteToCodepoint('a'), U'a');
  EXPECT_EQ(ByteToCodepoint('!'), U'!');
  EXPECT_EQ(ByteToCodepoint('~'), U'~');
  EXPECT_EQ(ByteToCodepoint(0xA1), U'\u00A1');  // '¡' is printable Latin-1: itself
  EXPECT_EQ(ByteToCodepoint(0xFF), U'\u00FF');
  // The 68 others are numbered from U+0100 in byte order: 0x00..0x20 are the first 33.
  EXPECT_EQ(ByteToCodepoint(0x00), U'\u0100');
  EXPECT_EQ(ByteToCodepoint('\t'), U'\u0109');  // 'ĉ'
  EXPECT_EQ(ByteToCodepoint('\n'), U'\u010A');  // 'Ċ'
  EXPECT_EQ(ByteToCodepoint(' '), U'\u0120');   // 'Ġ'
  EXPECT_EQ(ByteToCodepoint(0x7F), U'\u0121');  // 34th non-printable
  EXPECT_EQ(ByteToCodepoint(0x80), U'\u0122');
  EXPECT_EQ(ByteToCodepoint(0xA0), U'\u0142');  // 0x80..0xA0: 35th..67th
  EXPECT_EQ(ByteToCodepoint(0xAD), U'\u0143');  // soft hyphen, the 68th: 'Ń'
}

TEST(ByteUnicodeTest, MapIsABijection) {
  std::set<char32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = ByteToCodepoint(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cp).second) << b;
    ASSERT_TRUE(CodepointToByte(cp).has_value()) << b;
    EXPECT_EQ(*CodepointToByte(cp), b);
  }
  EXPECT_FALSE(CodepointToByte(U' ').has_value());  // a space never spells a byte
  EXPECT_FALSE(CodepointToByte(U'\u0144').has_value());
  EXPECT_FALSE(CodepointToByte(U'\u4E2D').has_value());
}

TEST(ByteUnicodeTest, ByteLevelSpelling) {
  EXPECT_EQ(BytesToByteLevel("a b\n"), "a\u0120b\u010A");
  // 'é' is C3 A9: both printable Latin-1 bytes, spelled 'Ã' '©'.
  EXPECT_EQ(BytesToByteLevel("\xC3\xA9"), "\u00C3\u00A9");
  EXPECT_EQ(ByteLevelToBytes("\u0120the"), " the");
  EXPECT_EQ(ByteLevelToBytes("\u00C3\u00A9"), "\xC3\xA9");
  EXPECT_FALSE(ByteLevelToBytes("a b").has_value());
  EXPECT_FALSE(ByteLevelToBytes("\xFF").has_value());  // not UTF-8
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(ByteLevelToBytes(BytesToByteLevel(all)), all);
}

TEST(ByteUnicodeTest, AppendAndDecodeUtf8) {
  std::string s;
  AppendUtf8(U'A', &s);
  AppendUtf8(U'\u00E9', &s);      // C3 A9
  AppendUtf8(U'\u20AC', &s);      // E2 82 AC
  AppendUtf8(U'\U0001F600', &s);  // F0 9F 98 80
  EXPECT_EQ(s, "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  Utf8Char c = DecodeUtf8At(s, 3);
  EXPECT_TRUE(c.valid);
  EXPECT_EQ(c.codepoint, U'\u20AC');
  EXPECT_EQ(c.length, 3);
  c = DecodeUtf8At(s, 6);
  EXPECT_EQ(c.codepoint, U'\U0001F600');
  EXPECT_EQ(c.length, 4);
}

TEST(ByteUnicodeTest, IllFormedSequences) {
  // Unicode §3.9 examples: each maximal subpart becomes one U+FFFD.
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(Utf8Lossy("a\x80z"), "a" + fffd + "z");                     // stray continuation
  EXPECT_EQ(Utf8Lossy("\xE2\x82z"), fffd + "z");                        // truncated 3-byte
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), fffd + fffd);                        // overlong lead C0
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), fffd + fffd + fffd);             // surrogate D800
  EXPECT_EQ(Utf8Lossy("\xF0\x80\x80"), fffd + fffd + fffd);             // overlong F0 80
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // > U+10FFFF
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), fffd);                           // one subpart
  EXPECT_EQ(Utf8Lossy("ok \xC3\xA9"), "ok \xC3\xA9");
  Utf8Char c = DecodeUtf8At("\xF0\x9F\x98", 0);
  EXPECT_FALSE(c.valid);
  EXPECT_TRUE(c.truncated);
  EXPECT_EQ(c.length, 3);
  c = DecodeUtf8At("\xF0\x9F" "a", 0);
  EXPECT_FALSE(c.truncated);
  EXPECT_EQ(c.length, 2);
}

TEST(ByteUnicodeTest, IncompleteSuffix) {
  EXPECT_EQ(IncompleteUtf8Suffix(""), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("ab\xC3"), 1u);
  EXPECT_EQ(IncompleteUtf8Suffix("ab\xC3\xA9"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("ab\xE2\x82"), 2u);
  EXPECT_EQ(IncompleteUtf8Suffix("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Suffix("\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\x80"), 0u);      // ill-formed, nothing to wait for
  EXPECT_EQ(IncompleteUtf8Suffix("\xE0\x80"), 0u);   // E0 80 can never complete
  EXPECT_EQ(IncompleteUtf8Suffix("\xE2\xF0"), 1u);   // only the F0 may still complete
}

TEST(ByteUnicodeTest, Whitespace) {
  for (char32_t c : {U'\t', U'\n', U'\v', U'\f', U'\r', U' ', U'\u0085', U'\u00A0', U'\u1680',
                     U'\u2000', U'\u200A', U'\u2028', U'\u2029', U'\u202F', U'\u205F', U'\u3000'}) {
    EXPECT_TRUE(IsUnicodeWhitespace(c)) << static_cast<uint32_t>(c);
  }
  for (char32_t c : {U'a', U'\u200B', U'\u180E', U'\uFEFF', U'\0', U'\u001F'}) {
    EXPECT_FALSE(IsUnicodeWhitespace(c)) << static_cast<uint32_t>(c);
  }
}

}  // namespace
}  // namespace indexcache
