#include "common/model/pattern_schedule.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/util/status_macros.h"

namespace indexcache {

absl::StatusOr<PatternSchedule> PatternSchedule::Create(std::vector<IndexerType> base, std::string_view ranges,
                                                        int32_t num_layers) {
  RETURN_IF_ERROR(ValidateIndexPattern(base, num_layers));
  PatternSchedule schedule(std::move(base));
  if (ranges.empty()) return schedule;
  // Debian's Abseil has a string_view of its own.
  for (absl::string_view entry : absl::StrSplit(absl::string_view(ranges.data(), ranges.size()), ',')) {
    const size_t colon = entry.find(':');
    auto problem = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("length pattern '", entry, "': ", what));
    };
    int32_t threshold = 0;
    if (colon == std::string_view::npos || !absl::SimpleAtoi(entry.substr(0, colon), &threshold)) {
      return problem("expected MIN_PROMPT_TOKENS:PATTERN, e.g. 8192:FSSSFSSS…");
    }
    if (threshold <= schedule.patterns_.back().min_prompt_tokens) {
      return problem(absl::StrCat("thresholds must be above 0 and increase (the previous is ",
                                  schedule.patterns_.back().min_prompt_tokens, ")"));
    }
    const absl::string_view pattern = entry.substr(colon + 1);
    absl::StatusOr<std::vector<IndexerType>> types =
        ParseIndexPattern(std::string_view(pattern.data(), pattern.size()), num_layers);
    if (!types.ok()) return problem(types.status().message());
    schedule.patterns_.push_back({threshold, *std::move(types)});
  }
  return schedule;
}

int32_t PatternSchedule::PatternFor(int64_t prompt_tokens) const {
  // The last range whose threshold the prompt reaches; the base's is 0, which every prompt reaches.
  const auto after = std::upper_bound(patterns_.begin() + 1, patterns_.end(), prompt_tokens,
                                      [](int64_t tokens, const LengthPattern& p) { return tokens < p.min_prompt_tokens; });
  return static_cast<int32_t>(after - patterns_.begin()) - 1;
}

std::vector<IndexerType> PatternSchedule::Loaded() const {
  std::vector<IndexerType> loaded = base();
  for (const LengthPattern& p : patterns_) {
    for (size_t l = 0; l < loaded.size(); ++l) {
      if (p.types[l] == IndexerType::kFull) loaded[l] = IndexerType::kFull;
    }
  }
  return loaded;
}

std::string PatternSchedule::FormatRanges() const {
  std::string out;
  for (size_t i = 1; i < patterns_.size(); ++i) {
    absl::StrAppend(&out, i > 1 ? "," : "", patterns_[i].min_prompt_tokens, ":", FormatIndexPattern(patterns_[i].types));
  }
  return out;
}

std::vector<std::pair<int32_t, std::string>> PatternSchedule::Named() const {
  std::vector<std::pair<int32_t, std::string>> named;
  for (const LengthPattern& p : patterns_) named.emplace_back(p.min_prompt_tokens, FormatIndexPattern(p.types));
  return named;
}

}  // namespace indexcache
