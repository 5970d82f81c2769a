#include "common/model/pattern_schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace indexcache {
namespace {

using ::testing::HasSubstr;

std::vector<IndexerType> P(std::string_view s) { return *ParseIndexPattern(s, static_cast<int32_t>(s.size())); }

TEST(PatternScheduleTest, EachPromptGetsTheRangeItReaches) {
  absl::StatusOr<PatternSchedule> s = PatternSchedule::Create(P("FFFF"), "100:FSFS,1000:FSSS", 4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->adaptive());
  // Thresholds are inclusive: a prompt of exactly 100 tokens is served by the 100 range.
  const std::vector<std::pair<int64_t, int32_t>> cases = {{1, 0}, {99, 0}, {100, 1}, {999, 1}, {1000, 2}, {1 << 30, 2}};
  for (const auto& [tokens, pattern] : cases) {
    EXPECT_EQ(s->PatternFor(tokens), pattern) << tokens << " tokens";
  }
  EXPECT_EQ(FormatIndexPattern(s->TypesFor(500)), "FSFS");
  EXPECT_EQ(s->FormatRanges(), "100:FSFS,1000:FSSS");
}

TEST(PatternScheduleTest, LoadsEveryLayerSomePatternRunsFull) {
  absl::StatusOr<PatternSchedule> s = PatternSchedule::Create(P("FSSSSS"), "10:FFSSSS,20:FSSSSF", 6);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(FormatIndexPattern(s->Loaded()), "FFSSSF");
}

TEST(PatternScheduleTest, WithoutRangesOnePatternServesAll) {
  absl::StatusOr<PatternSchedule> s = PatternSchedule::Create(P("FSFS"), "", 4);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->adaptive());
  EXPECT_EQ(s->PatternFor(1 << 20), 0);
  EXPECT_EQ(FormatIndexPattern(s->Loaded()), "FSFS");
  EXPECT_EQ(s->FormatRanges(), "");
}

TEST(PatternScheduleTest, RefusesMalformedRangesNamingTheEntry) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"FSFS", "expected MIN_PROMPT_TOKENS:PATTERN"},
      {"x:FSFS", "expected MIN_PROMPT_TOKENS:PATTERN"},
      {"0:FSFS", "above 0 and increase"},
      {"100:FSFS,100:FSSS", "above 0 and increase"},
      {"100:FSFS,50:FSSS", "above 0 and increase"},
      {"100:FSF", "has 3 layers but the model has 4"},
      {"100:SFFF", "starts with a Shared layer"},
      {"100:FXFS", "only 'F' (full) and 'S'"},
  };
  for (const auto& [ranges, why] : bad) {
    absl::StatusOr<PatternSchedule> s = PatternSchedule::Create(P("FFFF"), ranges, 4);
    ASSERT_FALSE(s.ok()) << ranges;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << ranges;
    EXPECT_THAT(s.status().message(), HasSubstr(why)) << ranges;
  }
}

}  // namespace
}  // namespace indexcache
