// Hand-built tokenizer.json strings whose expected ids are derived by hand from the merge rules
// (the reasoning is in the comments), plus error handling and round trips on real files.
#include "common/tokenizer/bpe_tokenizer.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/tokenizer/byte_unicode.h"

namespace indexcache {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// GPT-2 layout. Merge ranks (lower = applied first):
//   0 "h e"  1 "l l"  2 "ll o"  3 "Ġ w"  4 "o r"  5 "he llo"  6 "Ġw or"  7 "e l"
// Added tokens: "<a>" (20, special), "<a>b" (21), "<r>" (24, lstrip+rstrip), all matched on raw
// text; "h<" (23, normalized: true) only in what the raw ones leave.
constexpr char kGpt2Style[] = R"json({
  "version": "1.0",
  "added_tokens": [
    {"id": 20, "content": "<a>", "special": true, "normalized": false},
    {"id": 21, "content": "<a>b", "special": false, "normalized": false},
    {"id": 23, "content": "h<", "special": false, "normalized": true},
    {"id": 24, "content": "<r>", "special": true, "normalized": false, "lstrip": true, "rstrip": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "model": {
    "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
    "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7, "he": 8, "ll": 9,
              "llo": 10, "hello": 11, "Ġw": 12, "or": 13, "Ġwor": 14, "!": 15, "el": 16},
    "merges": ["h e", "l l", ["ll", "o"], "Ġ w", "o r", "he llo", "Ġw or", "e l"]
  }
})json";

std::unique_ptr<BpeTokenizer> Load(std::string_view text) {
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromJson(text);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(BpeTokenizerTest, MergesByRank) {
  auto tok = Load(kGpt2Style);
  ASSERT_NE(tok, nullptr);
  // Pre-tokens "hello", " world", "!".
  // "hello": h e l l o -> (h,e) rank 0 -> he l l o -> (l,l) 1 -> he ll o -> (ll,o) 2 -> he llo
  //          -> (he,llo) 5 -> hello = 11.
  // " world": Ġ w o r l d -> (Ġ,w) 3 -> Ġw o r l d -> (o,r) 4 -> Ġw or l d -> (Ġw,or) 6
  //          -> Ġwor l d: no merge with l, none for (l,d) -> 14 2 7.
  // "!": 15.
  EXPECT_THAT(tok->Encode("hello world!"), ElementsAre(11, 14, 2, 7, 15));
  // "ello": (e,l) has rank 7 but (l,l) rank 1 goes first: e ll o -> (ll,o) 2 -> e llo; no
  // (e,llo) merge -> 1 10. (Merging leftmost-first would have given el l o.)
  EXPECT_THAT(tok->Encode("ello"), ElementsAre(1, 10));
  // "lll": both pairs (l,l) have rank 1; the leftmost wins: ll l, then no (ll,l) -> 9 2.
  EXPECT_THAT(tok->Encode("lll"), ElementsAre(9, 2));
  // Byte 'z' has no token and there is no unk: dropped, as HF tokenizers does.
  EXPECT_THAT(tok->Encode("hz"), ElementsAre(0));
  EXPECT_THAT(tok->Encode(""), ElementsAre());
}

TEST(BpeTokenizerTest, AddedTokens) {
  auto tok = Load(kGpt2Style);
  ASSERT_NE(tok, nullptr);
  // Longest match at the leftmost position: "<a>b" (21) over "<a>" (20).
  EXPECT_THAT(tok->Encode("<a>bhello<a>"), ElementsAre(21, 11, 20));
  // Raw-text tokens are cut first: "<a>" at offset 1 wins over the normalized "h<" at offset 0,
  // which then no longer matches in the leftover "h" -> 0 20.
  EXPECT_THAT(tok->Encode("h<a>"), ElementsAre(0, 20));
  EXPECT_THAT(tok->Encode("hh<"), ElementsAre(0, 23));
  // "<r>" strips whitespace on both sides: "he", "<r>", "lo" -> 8 24 | l o has no merge -> 2 3.
  EXPECT_THAT(tok->Encode("he  <r>  lo"), ElementsAre(8, 24, 2, 3));
  // An unfinished token is plain text: "<a" -> "<" and "a" have no tokens, dropped.
  EXPECT_THAT(tok->Encode("<a"), ElementsAre());
}

TEST(BpeTokenizerTest, DecodeAndLookups) {
  auto tok = Load(kGpt2Style);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 25);
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{11, 14, 2, 7, 15}).value(), "hello world!");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{21, 11, 20}).value(), "<a>bhello<a>");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{21, 11, 20}, /*skip_special_tokens=*/true).value(),
            "<a>bhello");
  EXPECT_EQ(tok->TokenToId("Ġwor"), 14);
  EXPECT_EQ(tok->TokenToId("<a>"), 20);
  EXPECT_EQ(tok->TokenToId(" wor"), std::nullopt);
  EXPECT_TRUE(tok->IsSpecial(20));
  EXPECT_TRUE(tok->IsSpecial(24));
  EXPECT_FALSE(tok->IsSpecial(21));
  EXPECT_FALSE(tok->IsSpecial(11));
  EXPECT_FALSE(tok->IsSpecial(-1));
  EXPECT_FALSE(tok->IsSpecial(25));
}

TEST(BpeTokenizerTest, DecodeRefusesBadIds) {
  auto tok = Load(kGpt2Style);
  ASSERT_NE(tok, nullptr);
  for (int32_t bad : {-1, 25, 1 << 30}) {
    absl::StatusOr<std::string> text = tok->Decode(std::vector<int32_t>{11, bad});
    ASSERT_FALSE(text.ok()) << bad;
    EXPECT_THAT(text.status().message(), HasSubstr("out of range [0, 25)"));
  }
  absl::StatusOr<std::string> text = tok->Decode(std::vector<int32_t>{18});  // a hole: no token
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("has no token"));
}

TEST(BpeTokenizerTest, UnkToken) {
  json spec = json::parse(kGpt2Style);
  spec["model"]["vocab"]["<unk>"] = 17;
  spec["model"]["unk_token"] = "<unk>";
  auto tok = Load(spec.dump());
  ASSERT_NE(tok, nullptr);
  // h, then two unknown bytes: one unk each.
  EXPECT_THAT(tok->Encode("hzz"), ElementsAre(0, 17, 17));
  spec["model"]["fuse_unk"] = true;
  tok = Load(spec.dump());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hzz"), ElementsAre(0, 17));  // fused into one
}

// Llama-3 / GLM layout: Split with the Llama-3 regex, then ByteLevel without its own regex.
// Only one merge, "h e"; the vocab also holds "hello" and "ĊĊ".
json Llama3Style(bool ignore_merges) {
  json spec = json::parse(R"json({
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "Ċ": 5, "he": 6,
              "hello": 7, "ĊĊ": 8, "1": 9, "2": 10},
              "merges": ["h e"]}
  })json");
  spec["model"]["ignore_merges"] = ignore_merges;
  return spec;
}

TEST(BpeTokenizerTest, Llama3LayoutAndIgnoreMerges) {
  auto tok = Load(Llama3Style(/*ignore_merges=*/true).dump());
  ASSERT_NE(tok, nullptr);
  // Pre-tokens "hello", "\n\n", "hell", " ", "121", "2" (digits go by three, the single space
  // before a digit stands alone). "hello" and "\n\n" (ĊĊ) are whole vocab tokens: 7, 8 with
  // ignore_merges. "hell": h e l l -> he l l -> 6 2 2. " " -> 4. "121" is not in the vocab:
  // 9 10 9. "2" -> 10.
  EXPECT_THAT(tok->Encode("hello\n\nhell 1212"), ElementsAre(7, 8, 6, 2, 2, 4, 9, 10, 9, 10));
  // Without ignore_merges the same words go through the merges: he l l o -> 6 2 2 3; Ċ Ċ -> 5 5.
  tok = Load(Llama3Style(/*ignore_merges=*/false).dump());
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hello\n\n"), ElementsAre(6, 2, 2, 3, 5, 5));
}

// Split of the literal "-" with a given behaviour, then ByteLevel. Merges: 0 "a -", 1 "- b",
// 2 "- -", so the ids show where the pieces were cut.
std::unique_ptr<BpeTokenizer> DashSplit(const std::string& behavior, bool invert) {
  json spec = json::parse(R"json({
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"String": "-"}},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "-": 2, "a-": 3, "-b": 4, "--": 6},
              "merges": ["a -", "- b", "- -"]}
  })json");
  spec["pre_tokenizer"]["pretokenizers"][0]["behavior"] = behavior;
  spec["pre_tokenizer"]["pretokenizers"][0]["invert"] = invert;
  return Load(spec.dump());
}

TEST(BpeTokenizerTest, SplitBehaviors) {
  // "a-b": pieces a | - | b.
  EXPECT_THAT(DashSplit("Isolated", false)->Encode("a-b"), ElementsAre(0, 2, 1));
  EXPECT_THAT(DashSplit("Removed", false)->Encode("a-b"), ElementsAre(0, 1));
  EXPECT_THAT(DashSplit("MergedWithPrevious", false)->Encode("a-b"), ElementsAre(3, 1));  // a- | b
  EXPECT_THAT(DashSplit("MergedWithNext", false)->Encode("a-b"), ElementsAre(0, 4));      // a | -b
  // "a--b": Isolated keeps each dash alone; Contiguous joins the run "--" (6).
  EXPECT_THAT(DashSplit("Isolated", false)->Encode("a--b"), ElementsAre(0, 2, 2, 1));
  EXPECT_THAT(DashSplit("Contiguous", false)->Encode("a--b"), ElementsAre(0, 6, 1));
  // MergedWithPrevious joins only the first dash of a run to the text before it: a- | - | b.
  EXPECT_THAT(DashSplit("MergedWithPrevious", false)->Encode("a--b"), ElementsAre(3, 2, 1));
  // Inverted, the dashes are the kept text and "a", "b" the removed delimiters.
  EXPECT_THAT(DashSplit("Removed", true)->Encode("a-b"), ElementsAre(2));
}

TEST(BpeTokenizerTest, RefusesUnsupportedOrBrokenFiles) {
  const auto error_of = [](const std::string& text) {
    absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromJson(text);
    EXPECT_FALSE(tok.ok());
    return tok.ok() ? std::string() : std::string(tok.status().message());
  };
  EXPECT_THAT(error_of("{\"model\": "), HasSubstr("not valid JSON"));
  EXPECT_THAT(error_of("[1, 2]"), HasSubstr("not a JSON object"));
  json spec = json::parse(kGpt2Style);
  auto with = [&](const json::json_pointer& at, json value) {
    json copy = spec;
    copy[at] = std::move(value);
    return error_of(copy.dump());
  };
  EXPECT_THAT(with(json::json_pointer("/model/type"), "WordPiece"),
              HasSubstr("unsupported model type 'WordPiece'"));
  EXPECT_THAT(with(json::json_pointer("/normalizer"), json{{"type", "NFC"}}),
              HasSubstr("unsupported normalizer 'NFC'"));
  EXPECT_THAT(with(json::json_pointer("/pre_tokenizer"), json{{"type", "Metaspace"}}),
              HasSubstr("unsupported pre_tokenizer type 'Metaspace'"));
  EXPECT_THAT(with(json::json_pointer("/pre_tokenizer"), nullptr), HasSubstr("ByteLevel"));
  EXPECT_THAT(with(json::json_pointer("/decoder"), json{{"type", "WordPiece"}}),
              HasSubstr("unsupported decoder 'WordPiece'"));
  EXPECT_THAT(with(json::json_pointer("/model/byte_fallback"), true), HasSubstr("byte_fallback"));
  EXPECT_THAT(with(json::json_pointer("/model/merges/0"), "h x"), HasSubstr("'x', which is not in the vocab"));
  EXPECT_THAT(with(json::json_pointer("/model/merges/0"), "hex"), HasSubstr("not two tokens"));
  EXPECT_THAT(with(json::json_pointer("/model/vocab/h"), "zero"), HasSubstr("must be an integer id"));
  EXPECT_THAT(with(json::json_pointer("/added_tokens/0/single_word"), true), HasSubstr("single_word"));
  EXPECT_THAT(with(json::json_pointer("/model/unk_token"), "<nope>"), HasSubstr("not a token of the vocab"));
  EXPECT_THAT(with(json::json_pointer("/added_tokens/0/id"), 2000000000), HasSubstr("above"));

  absl::StatusOr<std::unique_ptr<BpeTokenizer>> missing =
      BpeTokenizer::FromFile("/nonexistent/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// Strings covering the classes the pre-tokenizer treats differently.
std::vector<std::string> RoundTripTexts() {
  std::vector<std::string> texts = {
      "", " ", "Hello, world!", "  leading and trailing  ", "tabs\tand\nnew\r\nlines\n\n\n",
      "digits 0 12 345 6789 3.14159 1,000,000", "punctuation!?.,;:'\"()[]{}<>/\\|@#$%^&*-_=+`~",
      "it's we're I'M they'll", "Café naïve façade Ærøskøbing Straße", "e\u0301 combining",
      "日本語のテキスト、中文和English混合。", "한국어 Русский Ελληνικά العربية हिन्दी",
      "emoji 😀👍🏽👨‍👩‍👧‍👦🇫🇷 ❤️", "nbsp\u00A0ideographic\u3000space\u2028sep",
      "<|endoftext|>", "before<|endoftext|>after<|begin|>", "<|endoftext", "\x01\x02\x7F control"};
  // Random code points from every plane in use (seeded: deterministic).
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> cp_dist(1, 0x10FFFF);
  for (int n = 0; n < 50; ++n) {
    std::string s;
    for (int i = 0; i < 20; ++i) {
      uint32_t cp = cp_dist(rng);
      if (rng() % 2) cp %= 0x80;
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      AppendUtf8(cp, &s);
    }
    texts.push_back(s);
  }
  return texts;
}

void ExpectRoundTrips(const BpeTokenizer& tok) {
  for (const std::string& text : RoundTripTexts()) {
    std::vector<int32_t> ids = tok.Encode(text);
    absl::StatusOr<std::string> decoded = tok.Decode(ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }
  // Bytes that are not UTF-8 still round-trip (every byte has a token).
  std::string bytes;
  for (int b = 255; b >= 0; --b) bytes.push_back(static_cast<char>(b));
  EXPECT_EQ(tok.Decode(tok.Encode(bytes)).value(), bytes);
}

TEST(BpeTokenizerTest, RoundTripBundledModelTokenizer) {
  const std::string path = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random/tokenizer.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not there yet";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ExpectRoundTrips(**tok);
  // Its special tokens are single ids.
  std::optional<int32_t> eos = (*tok)->TokenToId("<|endoftext|>");
  ASSERT_TRUE(eos.has_value());
  EXPECT_TRUE((*tok)->IsSpecial(*eos));
  EXPECT_THAT((*tok)->Encode("<|endoftext|>"), ElementsAre(*eos));
}

TEST(BpeTokenizerTest, RoundTripGlmStyleFixture) {
  const std::string path =
      std::string(INDEXCACHE_TEST_DATA) + "/../tokenizer/testdata/glm_style_tokenizer.json";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ExpectRoundTrips(**tok);
}

// About 1 MB of English-like text: encoding must stay far below a second (words are cached), and
// a pathological 256 KB single word must not go quadratic.
TEST(BpeTokenizerTest, EncodesAMegabyteQuickly) {
  const std::string path =
      std::string(INDEXCACHE_TEST_DATA) + "/../tokenizer/testdata/glm_style_tokenizer.json";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<std::string> words = {"the", "of", "and", "a", "to", "in", "is", "you", "that",
                                          "it", "he", "was", "for", "on", "are", "as", "with",
                                          "his", "they", "I", "at", "be", "this", "have", "from"};
  std::mt19937 rng(11);
  std::string text;
  while (text.size() < (1 << 20)) {
    text += words[rng() % words.size()];
    if (rng() % 7 == 0) absl::StrAppend(&text, " ", rng() % 100000);
    text += (rng() % 13 == 0) ? ".\n" : " ";
  }
  auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = (*tok)->Encode(text);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu bytes into %zu ids in %.3f s\n", text.size(), ids.size(), seconds);
#ifdef NDEBUG  // timings of unoptimized (debug / sanitizer) builds mean nothing
  EXPECT_LT(seconds, 2.0);  // ~0.3 s on a 2-core CI box; the bound only catches a regression
#endif
  EXPECT_EQ((*tok)->Decode(ids).value(), text);

  const std::string word(256 << 10, 'a');
  start = std::chrono::steady_clock::now();
  ids = (*tok)->Encode(word);
#ifdef NDEBUG
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 2.0);
#endif
  EXPECT_EQ((*tok)->Decode(ids).value(), word);
}

TEST(BpeTokenizerTest, ConcurrentEncodeMatchesSerial) {
  const std::string path =
      std::string(INDEXCACHE_TEST_DATA) + "/../tokenizer/testdata/glm_style_tokenizer.json";
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<std::string> texts = RoundTripTexts();
  std::vector<std::vector<int32_t>> serial;
  for (const std::string& t : texts) serial.push_back((*tok)->Encode(t));
  // Fresh tokenizer, so the threads fill the word cache concurrently.
  tok = BpeTokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if ((*tok)->Encode(texts[(i + t) % texts.size()]) != serial[(i + t) % texts.size()]) {
            ++mismatches[t];
          }
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

}  // namespace
}  // namespace indexcache
