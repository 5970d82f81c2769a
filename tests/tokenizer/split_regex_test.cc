// Expected pieces are worked out from the pattern's semantics under a backtracking engine
// (Oniguruma, which HF tokenizers uses): alternatives tried in order at the leftmost position,
// `\s+(?!\S)` backing off one whitespace character when a non-space follows.
#include "common/tokenizer/split_regex.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace indexcache {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kGpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
constexpr char kLlama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// The matched substrings (every byte of these patterns' input is matched by some alternative).
std::vector<std::string> Pieces(const char* pattern, std::string_view text) {
  absl::StatusOr<std::unique_ptr<SplitRegex>> regex = SplitRegex::Compile(pattern);
  EXPECT_TRUE(regex.ok()) << regex.status();
  if (!regex.ok()) return {};
  std::vector<std::string> pieces;
  for (const auto& [begin, end] : (*regex)->FindAll(text)) {
    pieces.emplace_back(text.substr(begin, end - begin));
  }
  return pieces;
}

TEST(SplitRegexTest, Gpt2Words) {
  // " ?\p{L}+" keeps the space before a word; contractions split off.
  EXPECT_THAT(Pieces(kGpt2, "Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Pieces(kGpt2, "it's 42!"), ElementsAre("it", "'s", " 42", "!"));
  // GPT-2's contractions are case-sensitive: "'S" is punctuation + letters.
  EXPECT_THAT(Pieces(kGpt2, "IT'S"), ElementsAre("IT", "'", "S"));
}

TEST(SplitRegexTest, Gpt2WhitespaceLookahead) {
  // "a   b": at the run "   " no word alternative matches; \s+(?!\S) backs off to "  " so the
  // last space can start " b".
  EXPECT_THAT(Pieces(kGpt2, "a   b"), ElementsAre("a", "  ", " b"));
  // A single space before a word is simply the word's prefix.
  EXPECT_THAT(Pieces(kGpt2, "a b"), ElementsAre("a", " b"));
  // At the end of the text the whole run matches (the lookahead sees the end).
  EXPECT_THAT(Pieces(kGpt2, "a   "), ElementsAre("a", "   "));
  // Leading run before a word: gives one space back.
  EXPECT_THAT(Pieces(kGpt2, "  hi"), ElementsAre(" ", " hi"));
  // A run followed by punctuation: " ?[^\s\p{L}\p{N}]+" takes the last space.
  EXPECT_THAT(Pieces(kGpt2, "x \t !"), ElementsAre("x", " \t", " !"));
  // Newline then a word: "\n" alone (one char: \s+(?!\S) fails, \s+ matches), then "b" without
  // a space, since " ?" only takes a space.
  EXPECT_THAT(Pieces(kGpt2, "a\nb"), ElementsAre("a", "\n", "b"));
  EXPECT_THAT(Pieces(kGpt2, "a\n\nb"), ElementsAre("a", "\n", "\n", "b"));
}

TEST(SplitRegexTest, UnicodeWhitespaceIsSpace) {
  // Oniguruma's \s includes U+00A0 and U+3000 (RE2's alone would not): the run of two gives one
  // back, and a no-break space is not the " ?" of a word, so it stands alone.
  EXPECT_THAT(Pieces(kGpt2, "a\u00A0\u00A0b"), ElementsAre("a", "\u00A0", "\u00A0", "b"));
  EXPECT_THAT(Pieces(kGpt2, "x\u3000"), ElementsAre("x", "\u3000"));
  // \v (0x0B) is whitespace too.
  EXPECT_THAT(Pieces(kGpt2, "a\v\vb"), ElementsAre("a", "\v", "\v", "b"));
}

TEST(SplitRegexTest, Llama3) {
  // Case-insensitive contractions.
  EXPECT_THAT(Pieces(kLlama3, "I'M HERE"), ElementsAre("I", "'M", " HERE"));
  // Digits in groups of at most three, without a leading space.
  EXPECT_THAT(Pieces(kLlama3, "12345 7"), ElementsAre("123", "45", " ", "7"));
  // A non-letter, non-newline character may lead a word.
  EXPECT_THAT(Pieces(kLlama3, "(hello)"), ElementsAre("(hello", ")"));
  // Newline runs: "\s*[\r\n]+" takes "\n\n" before the word alternatives can.
  EXPECT_THAT(Pieces(kLlama3, "hello\n\nworld"), ElementsAre("hello", "\n\n", "world"));
  // Spaces then newline: \s* greedily takes "  \n" as one piece.
  EXPECT_THAT(Pieces(kLlama3, "a  \nb"), ElementsAre("a", "  \n", "b"));
  // The lookahead give-back: "   " before a word leaves one space to lead it.
  EXPECT_THAT(Pieces(kLlama3, "a   b"), ElementsAre("a", "  ", " b"));
  // Punctuation absorbs trailing newlines.
  EXPECT_THAT(Pieces(kLlama3, "end.\n\nNext"), ElementsAre("end", ".\n\n", "Next"));
}

TEST(SplitRegexTest, RewritesClassEscapes) {
  // \d is Unicode (Arabic-Indic digits are Nd), \w includes letters of any script.
  EXPECT_THAT(Pieces("\\d+", "a\u0663\u0664b12"), ElementsAre("\u0663\u0664", "12"));
  EXPECT_THAT(Pieces("\\w+", "\u00E9t\u00E9 \u4E2D"), ElementsAre("\u00E9t\u00E9", "\u4E2D"));
  EXPECT_THAT(Pieces("[\\s,]+", "a, \u00A0b"), ElementsAre(", \u00A0"));
  EXPECT_THAT(Pieces("\\S+", "ab\u3000cd"), ElementsAre("ab", "cd"));
  // Oniguruma's \uHHHH escape (RE2 spells it \x{HHHH}).
  EXPECT_THAT(Pieces("[a\\u200D]+", "xa\u200Dax"), ElementsAre("a\u200Da"));
}

TEST(SplitRegexTest, RefusesWhatRe2CannotDo) {
  for (const char* pattern : {"a(?=b)", "(?<!x)y", "\\s+(?!\\S)", "a++", "\\p{L}*+", "(?>ab)",
                              "[^\\S]", "[a"}) {
    absl::StatusOr<std::unique_ptr<SplitRegex>> regex = SplitRegex::Compile(pattern);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_THAT(regex.status().message(), HasSubstr("not supported")) << pattern;
  }
  absl::StatusOr<std::unique_ptr<SplitRegex>> regex = SplitRegex::Compile("a(b");
  ASSERT_FALSE(regex.ok());
  EXPECT_THAT(regex.status().message(), HasSubstr("does not compile with RE2"));
}

TEST(SplitRegexTest, EmptyMatchesAreSkipped) {
  EXPECT_THAT(Pieces("x*", "axxb"), ElementsAre("xx"));
}

}  // namespace
}  // namespace indexcache
