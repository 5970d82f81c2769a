// Byte-level BPE spelling and UTF-8 helpers.
//
// GPT-2 style tokenizers (GPT-2, Llama-3, GLM) run BPE over bytes, but tokenizer.json stores every
// token as a string of printable code points: each byte is spelled as one code point so that no token
// contains a space or a control character. Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) are
// spelled as themselves; the other 68 bytes, in increasing order, as U+0100, U+0101, ... (so the
// space 0x20 is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace indexcache {

// The code point that spells `byte` in tokenizer.json.
char32_t ByteToCodepoint(uint8_t byte);
// Inverse of ByteToCodepoint; nullopt for a code point that spells no byte.
std::optional<uint8_t> CodepointToByte(char32_t codepoint);

// `bytes` spelled byte-level: each byte becomes its code point, UTF-8 encoded ("a b" -> "aĠb").
std::string BytesToByteLevel(std::string_view bytes);
// Inverse of BytesToByteLevel; nullopt when `token` holds a character that spells no byte (or is not
// valid UTF-8), i.e. it is not a byte-level token.
std::optional<std::string> ByteLevelToBytes(std::string_view token);

// Appends the UTF-8 encoding of `codepoint` (< 0x110000) to `out`.
void AppendUtf8(char32_t codepoint, std::string* out);

// One character decoded from UTF-8. An ill-formed sequence decodes as U+FFFD with `length` = the
// bytes of its maximal well-formed prefix (at least 1), as the Unicode standard recommends (§3.9,
// "U+FFFD substitution of maximal subparts"); `truncated` says the prefix was cut by the end of
// the input rather than by a wrong byte, i.e. more bytes could still complete it.
struct Utf8Char {
  char32_t codepoint;
  int length;
  bool valid;
  bool truncated;
};
// Decodes the character that starts at s[pos]; requires pos < s.size().
Utf8Char DecodeUtf8At(std::string_view s, size_t pos);

// `bytes` with every ill-formed sequence replaced by U+FFFD (maximal subparts, like Rust's
// String::from_utf8_lossy, which Hugging Face tokenizers applies when decoding).
std::string Utf8Lossy(std::string_view bytes);

// How many trailing bytes of `bytes` (0..3) are a well-formed but incomplete UTF-8 sequence, i.e.
// bytes a streaming decoder must hold back until the next ones arrive.
size_t IncompleteUtf8Suffix(std::string_view bytes);

// Unicode White_Space: what Oniguruma's `\s` (Unicode mode, as HF tokenizers compiles its regexes)
// and Rust's char::is_whitespace match: U+0009..U+000D, U+0020, U+0085, U+00A0, U+1680,
// U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
bool IsUnicodeWhitespace(char32_t codepoint);

}  // namespace indexcache
