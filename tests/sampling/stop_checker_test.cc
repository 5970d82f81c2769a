#include "common/sampling/stop_checker.h"

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr int32_t kEos = 2;
constexpr int32_t kText = 100;  // an ordinary token id

SamplingParams WithStops(std::vector<std::string> stops, int32_t max_new_tokens = 100) {
  SamplingParams params;
  params.stop_strings = std::move(stops);
  params.max_new_tokens = max_new_tokens;
  return params;
}

// Feeds ordinary tokens with these text deltas; returns the text emitted by each call.
std::vector<std::string> Feed(StopChecker& checker, const std::vector<std::string>& deltas) {
  std::vector<std::string> emitted;
  for (const std::string& delta : deltas) {
    auto update = checker.Append(kText, delta);
    EXPECT_TRUE(update.ok()) << update.status();
    if (!update.ok()) break;
    emitted.push_back(update->text);
  }
  return emitted;
}

TEST(StopCheckerTest, WithoutStopsTextStreamsAtOnce) {
  StopChecker checker(WithStops({}), {kEos});
  EXPECT_EQ(Feed(checker, {"Hello", ", ", "world"}),
            (std::vector<std::string>{"Hello", ", ", "world"}));
  EXPECT_EQ(checker.finish_reason(), FinishReason::kNone);
  EXPECT_EQ(checker.num_generated(), 3);
  EXPECT_EQ(checker.Flush(), "");
}

TEST(StopCheckerTest, StopStringAcrossTokensIsCutAndNotEmitted) {
  StopChecker checker(WithStops({"END"}), {kEos});
  EXPECT_EQ(Feed(checker, {"Hello E", "N"}), (std::vector<std::string>{"Hello ", ""}));
  auto update = checker.Append(kText, "D and more");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "");
  EXPECT_EQ(checker.Flush(), "");
}

TEST(StopCheckerTest, StopStringInsideOneDeltaKeepsTheTextBeforeIt) {
  StopChecker checker(WithStops({"STOP"}), {kEos});
  auto update = checker.Append(kText, "foo STOP bar");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "foo ");
}

TEST(StopCheckerTest, StopStringAtTheVeryFirstToken) {
  StopChecker checker(WithStops({"END"}), {kEos});
  auto update = checker.Append(kText, "END");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "");
  EXPECT_EQ(checker.num_generated(), 1);
}

TEST(StopCheckerTest, HeldPrefixIsReleasedWhenItStopsMatching) {
  StopChecker checker(WithStops({"abc"}), {kEos});
  EXPECT_EQ(Feed(checker, {"x", "ab"}), (std::vector<std::string>{"x", ""}));
  EXPECT_EQ(Feed(checker, {"d"}), (std::vector<std::string>{"abd"}));
  EXPECT_EQ(checker.finish_reason(), FinishReason::kNone);
}

TEST(StopCheckerTest, SelfOverlappingStopString) {
  // "aab" in "aaab": after "aaa" only the last "aa" can still start it, so one "a" goes out.
  StopChecker checker(WithStops({"aab"}), {kEos});
  EXPECT_EQ(Feed(checker, {"a", "a", "a"}), (std::vector<std::string>{"", "", "a"}));
  auto update = checker.Append(kText, "b");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "");
}

TEST(StopCheckerTest, EarliestStopStringWins) {
  StopChecker checker(WithStops({"world", "lo"}), {kEos});
  auto update = checker.Append(kText, "hello world");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->text, "hel");
}

TEST(StopCheckerTest, FlushReturnsHeldText) {
  StopChecker checker(WithStops({"abc"}), {kEos});
  EXPECT_EQ(Feed(checker, {"xyab"}), (std::vector<std::string>{"xy"}));
  EXPECT_EQ(checker.Flush(), "ab");
  EXPECT_EQ(checker.Flush(), "");
}

TEST(StopCheckerTest, StopTokenIdFinishesWithoutItsTextAndReleasesHeldText) {
  SamplingParams params = WithStops({"abc"});
  params.stop_token_ids = {50};
  StopChecker checker(params, {kEos});
  EXPECT_EQ(Feed(checker, {"xab"}), (std::vector<std::string>{"x"}));
  auto update = checker.Append(50, "<|stop|>");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "ab");
}

TEST(StopCheckerTest, EosFinishesUnlessIgnored) {
  StopChecker stops(WithStops({}), {kEos, 3});
  auto update = stops.Append(3, "</s>");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
  EXPECT_EQ(update->text, "");

  SamplingParams params = WithStops({});
  params.ignore_eos = true;
  params.stop_token_ids = {7};
  StopChecker ignores(params, {kEos});
  update = ignores.Append(kEos, "</s>");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kNone);
  EXPECT_EQ(update->text, "</s>");
  update = ignores.Append(7, "x");  // explicit stop ids still apply
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
}

TEST(StopCheckerTest, LengthFinishesAtMaxNewTokensAndReleasesHeldText) {
  StopChecker checker(WithStops({"abc"}, 3), {kEos});
  EXPECT_EQ(Feed(checker, {"1", "2a"}), (std::vector<std::string>{"1", "2"}));
  auto update = checker.Append(kText, "b");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kLength);
  EXPECT_EQ(update->text, "ab");
  EXPECT_EQ(checker.finish_reason(), FinishReason::kLength);
}

TEST(StopCheckerTest, StopStringOnTheLastAllowedTokenIsAStop) {
  StopChecker checker(WithStops({"ab"}, 2), {kEos});
  Feed(checker, {"a"});
  auto update = checker.Append(kText, "b");
  ASSERT_TRUE(update.ok());
  EXPECT_EQ(update->finish, FinishReason::kStop);
}

TEST(StopCheckerTest, RefusesTokensAfterFinishing) {
  StopChecker checker(WithStops({}, 1), {kEos});
  ASSERT_TRUE(checker.Append(kText, "a").ok());
  auto update = checker.Append(kText, "b");
  EXPECT_EQ(update.status().code(), absl::StatusCode::kFailedPrecondition);
}

// The definition, evaluated naively on the whole text after every token: generation ends at the
// first token after which some stop string occurs anywhere, cut at its earliest occurrence; the
// text safe to have emitted after each token is the whole text minus its longest suffix that is a
// proper prefix of a stop string.
TEST(StopCheckerTest, RandomStreamsMatchTheDefinition) {
  std::mt19937 rng(17);
  const std::vector<std::vector<std::string>> stop_sets = {
      {"aba"}, {"bb", "aab"}, {"abab", "ba"}, {"aaaa"}, {"b", "abba"}};
  for (int trial = 0; trial < 3000; ++trial) {
    const std::vector<std::string>& stops = stop_sets[trial % stop_sets.size()];
    const int32_t max_new_tokens = 1 + static_cast<int32_t>(rng() % 12);
    StopChecker checker(WithStops(stops, max_new_tokens), {kEos});
    std::string all, emitted;
    FinishReason finish = FinishReason::kNone;
    for (int32_t t = 0; t < 14 && finish == FinishReason::kNone; ++t) {
      std::string delta;
      for (size_t n = rng() % 4; n > 0; --n) delta.push_back(rng() % 2 ? 'a' : 'b');
      all += delta;
      auto update = checker.Append(kText, delta);
      ASSERT_TRUE(update.ok());
      emitted += update->text;
      finish = update->finish;

      size_t cut = std::string::npos;
      for (const std::string& s : stops) {
        cut = std::min(cut, all.find(s));
      }
      if (cut != std::string::npos) {
        ASSERT_EQ(finish, FinishReason::kStop) << all;
        ASSERT_EQ(emitted, all.substr(0, cut)) << all;
      } else if (t + 1 == max_new_tokens) {
        ASSERT_EQ(finish, FinishReason::kLength) << all;
        ASSERT_EQ(emitted, all) << all;
      } else {
        ASSERT_EQ(finish, FinishReason::kNone) << all;
        size_t held = 0;
        for (const std::string& s : stops) {
          for (size_t len = 1; len < s.size() && len <= all.size(); ++len) {
            if (all.compare(all.size() - len, len, s, 0, len) == 0) {
              held = std::max(held, len);
            }
          }
        }
        ASSERT_EQ(emitted, all.substr(0, all.size() - held)) << all;
      }
    }
    if (finish == FinishReason::kNone) {
      EXPECT_EQ(emitted + checker.Flush(), all);
    }
  }
}

}  // namespace
}  // namespace indexcache
