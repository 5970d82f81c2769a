#include "common/search/calibration_set.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One line of a .jsonl calibration file: a JSON array of in-vocabulary token ids.
absl::StatusOr<std::vector<int32_t>> ParseIdsLine(const std::string& line, const std::string& where,
                                                  int32_t vocab_size) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON array of token ids"));
  }
  std::vector<int32_t> ids;
  ids.reserve(j.size());
  for (const nlohmann::json& e : j) {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: %s is not a token id of the model (vocabulary [0, %d))", where, e.dump(), vocab_size));
    }
    ids.push_back(e.get<int32_t>());
  }
  return ids;
}

}  // namespace

int64_t CalibrationSet::predicted_tokens() const {
  int64_t n = 0;
  for (const auto& w : windows) n += static_cast<int64_t>(w.size()) - 1;
  for (const RetrievalCase& c : retrieval) n += static_cast<int64_t>(c.tokens.size()) - c.answer_begin;
  return n;
}

int32_t CalibrationSet::longest_window() const {
  size_t longest = 0;
  for (const auto& w : windows) longest = std::max(longest, w.size());
  for (const RetrievalCase& c : retrieval) longest = std::max(longest, c.tokens.size());
  return static_cast<int32_t>(longest);
}

void AppendWindows(const std::vector<int32_t>& ids, int32_t context, CalibrationSet& set) {
  for (size_t begin = 0; begin + 1 < ids.size(); begin += context) {
    set.windows.emplace_back(ids.begin() + begin, ids.begin() + std::min(ids.size(), begin + context));
  }
}

absl::StatusOr<CalibrationSet> LoadCalibrationSet(const std::string& path, int32_t context,
                                                  const BpeTokenizer* tokenizer, int32_t vocab_size) {
  if (context < 2) {
    return absl::InvalidArgumentError(absl::StrCat("the context must be at least 2 tokens, got ", context));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open calibration file ", path));
  CalibrationSet set;
  if (EndsWith(path, ".jsonl")) {
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdsLine(line, absl::StrCat(path, ":", number), vocab_size));
      AppendWindows(ids, context, set);
    }
  } else {
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "calibration text ", path, " needs the model's tokenizer.json; give token ids as a .jsonl file instead"));
    }
    std::stringstream text;
    text << in.rdbuf();
    AppendWindows(tokenizer->Encode(text.str()), context, set);
  }
  if (set.windows.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", path, " holds no window of at least 2 tokens: nothing to score"));
  }
  return set;
}

absl::StatusOr<std::vector<RetrievalCase>> LoadRetrievalCases(const std::string& path, const BpeTokenizer* tokenizer,
                                                              int32_t vocab_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open retrieval cases ", path));
  std::vector<RetrievalCase> cases;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", number);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a JSON object"));
    // One part of the case: its ids, or its text encoded.
    auto part = [&](const char* text_key, const char* ids_key) -> absl::StatusOr<std::vector<int32_t>> {
      if (j.contains(ids_key)) return ParseIdsLine(j[ids_key].dump(), absl::StrCat(where, " ", ids_key), vocab_size);
      if (!j.contains(text_key) || !j[text_key].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": a retrieval case needs \"", text_key, "\" (text) or \"", ids_key, "\" (token ids)"));
      }
      if (tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": text needs the model's tokenizer.json; give \"", ids_key, "\" instead"));
      }
      return tokenizer->Encode(j[text_key].get<std::string>());
    };
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, part("prompt", "prompt_ids"));
    ASSIGN_OR_RETURN(std::vector<int32_t> answer, part("answer", "answer_ids"));
    if (prompt.empty() || answer.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the prompt and the answer must both hold tokens"));
    }
    RetrievalCase& c = cases.emplace_back();
    c.answer_begin = static_cast<int32_t>(prompt.size());
    c.tokens = std::move(prompt);
    c.tokens.insert(c.tokens.end(), answer.begin(), answer.end());
  }
  if (cases.empty()) return absl::InvalidArgumentError(absl::StrCat("retrieval file ", path, " holds no case"));
  return cases;
}

}  // namespace indexcache
