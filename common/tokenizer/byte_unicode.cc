#include "common/tokenizer/byte_unicode.h"

#include <array>

namespace indexcache {
namespace {

bool IsPrintableByte(uint8_t b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

// byte -> code point, built once: printable bytes keep their value, the others are numbered from
// 256 in increasing byte order.
struct ByteMap {
  std::array<char32_t, 256> to_codepoint{};
  std::array<int16_t, 324> to_byte{};  // code points < 324 cover the whole image; -1 = none
  ByteMap() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      char32_t cp = IsPrintableByte(static_cast<uint8_t>(b)) ? static_cast<char32_t>(b) : next++;
      to_codepoint[b] = cp;
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteMap& Map() {
  static const ByteMap map;
  return map;
}

bool InRange(uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; }

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

char32_t ByteToCodepoint(uint8_t byte) { return Map().to_codepoint[byte]; }

std::optional<uint8_t> CodepointToByte(char32_t codepoint) {
  if (codepoint >= Map().to_byte.size() || Map().to_byte[codepoint] < 0) return std::nullopt;
  return static_cast<uint8_t>(Map().to_byte[codepoint]);
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(ByteToCodepoint(static_cast<uint8_t>(c)), &out);
  return out;
}

std::optional<std::string> ByteLevelToBytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (size_t pos = 0; pos < token.size();) {
    Utf8Char ch = DecodeUtf8At(token, pos);
    if (!ch.valid) return std::nullopt;
    std::optional<uint8_t> byte = CodepointToByte(ch.codepoint);
    if (!byte) return std::nullopt;
    out.push_back(static_cast<char>(*byte));
    pos += ch.length;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

Utf8Char DecodeUtf8At(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  if (b0 < 0x80) return {b0, 1, true, false};
  // Length and the allowed range of the second byte, which excludes overlong forms, surrogates
  // (ED A0..BF) and code points above U+10FFFF (Unicode Table 3-7).
  int length;
  uint8_t lo = 0x80, hi = 0xBF;
  char32_t cp;
  if (InRange(b0, 0xC2, 0xDF)) {
    length = 2;
    cp = b0 & 0x1F;
  } else if (InRange(b0, 0xE0, 0xEF)) {
    length = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (InRange(b0, 0xF0, 0xF4)) {
    length = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0xFFFD, 1, false, false};  // a stray continuation byte or a byte never used in UTF-8
  }
  for (int i = 1; i < length; ++i) {
    if (pos + i >= s.size()) return {0xFFFD, i, false, true};
    const uint8_t b = byte(pos + i);
    if (!InRange(b, i == 1 ? lo : 0x80, i == 1 ? hi : 0xBF)) return {0xFFFD, i, false, false};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, length, true, false};
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    Utf8Char ch = DecodeUtf8At(bytes, pos);
    if (ch.valid) {
      out.append(bytes.substr(pos, ch.length));
    } else {
      out.append(kReplacement);
    }
    pos += ch.length;
  }
  return out;
}

size_t IncompleteUtf8Suffix(std::string_view bytes) {
  // A lead byte can never be swallowed by an earlier sequence, so the last lead byte within the
  // final 3 bytes starts the only candidate.
  const size_t stop = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t i = bytes.size(); i > stop; --i) {
    const size_t pos = i - 1;
    if ((static_cast<uint8_t>(bytes[pos]) & 0xC0) == 0x80) continue;  // continuation byte
    Utf8Char ch = DecodeUtf8At(bytes, pos);
    return ch.truncated ? bytes.size() - pos : 0;
  }
  return 0;
}

bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

}  // namespace indexcache
