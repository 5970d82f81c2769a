// Which IndexCache pattern serves a request, by the length of its prompt (an adaptive pattern). Below
// the first threshold the base pattern serves (the checkpoint's, or --index-pattern / --index-freq);
// each length range names its own from its threshold on, e.g. all-Full below 8K tokens, where the
// indexer is cheap and reuse only costs quality, and 1/4 of the indexers from 8K on:
//
//   base FFFFFFFFFFFFFFFF, ranges "8192:FFSSSSFSSSSFSSSS"
//
// A request keeps its pattern for its whole life (its Full layers' index keys are the only ones its
// cache holds), so the length that chooses is the prompt as its client sent it: a request resumed
// elsewhere with its generated tokens appended (SamplingParams::resumed_tokens) keeps the pattern it
// started with. The model loads every layer that some pattern runs Full (Loaded()).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model_config.h"

namespace indexcache {

struct LengthPattern {
  int32_t min_prompt_tokens = 0;  // serves prompts of at least this many tokens (up to the next range)
  std::vector<IndexerType> types;
};

class PatternSchedule {
 public:
  // One pattern for every length.
  explicit PatternSchedule(std::vector<IndexerType> base) { patterns_.push_back({0, std::move(base)}); }
  // `ranges`: "N:PATTERN[,N:PATTERN…]", thresholds strictly increasing and above 0; empty: none.
  // Errors name the offending entry.
  static absl::StatusOr<PatternSchedule> Create(std::vector<IndexerType> base, std::string_view ranges,
                                                int32_t num_layers);

  // Whether more than one pattern serves.
  bool adaptive() const { return patterns_.size() > 1; }
  // The patterns, base first (index 0), then the ranges by threshold: what PatternFor indexes.
  const std::vector<LengthPattern>& patterns() const { return patterns_; }
  const std::vector<IndexerType>& base() const { return patterns_.front().types; }
  // The index of the pattern that serves a prompt of `prompt_tokens` tokens (as its client sent it).
  int32_t PatternFor(int64_t prompt_tokens) const;
  const std::vector<IndexerType>& TypesFor(int64_t prompt_tokens) const {
    return patterns_[PatternFor(prompt_tokens)].types;
  }
  // Full where any pattern is Full: the layers whose indexer weights and index-key pools must exist.
  std::vector<IndexerType> Loaded() const;
  // The ranges as Create takes them ("" when not adaptive).
  std::string FormatRanges() const;
  // Each pattern as (min_prompt_tokens, "FS…"), in patterns() order.
  std::vector<std::pair<int32_t, std::string>> Named() const;

 private:
  std::vector<LengthPattern> patterns_;
};


}  // namespace indexcache
