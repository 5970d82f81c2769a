#include "services/openai/openai_logprobs.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace indexcache::openai {
namespace {

using nlohmann::json;

double Finite(float logprob) { return std::max(static_cast<double>(logprob), -9999.0); }

json Bytes(const std::string& text) {
  json bytes = json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

std::string LogprobsFormatter::TokenText(int32_t token_id) const {
  if (tokenizer_ != nullptr) {
    const int32_t ids[] = {token_id};
    absl::StatusOr<std::string> text = tokenizer_->Decode(ids);
    if (text.ok()) return *std::move(text);
  }
  return absl::StrCat("token_id:", token_id);
}

json LogprobsFormatter::Completions(const TokenLogprobsList& tokens, int64_t text_offset,
                                    int64_t* next_offset) const {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const v1::TokenLogprobs& token : tokens) {
    const std::string text = TokenText(token.token_id());
    json top = json::object();
    for (const v1::Logprob& alternative : token.top_logprobs()) {
      top[TokenText(alternative.token_id())] = Finite(alternative.logprob());
    }
    top[text] = Finite(token.logprob());  // OpenAI's API always lists the chosen token
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(Finite(token.logprob()));
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(text_offset);
    text_offset += static_cast<int64_t>(text.size());
  }
  if (next_offset != nullptr) *next_offset = text_offset;
  return out;
}

json LogprobsFormatter::Chat(const TokenLogprobsList& tokens) const {
  json content = json::array();
  for (const v1::TokenLogprobs& token : tokens) {
    const std::string text = TokenText(token.token_id());
    json top = json::array();
    for (const v1::Logprob& alternative : token.top_logprobs()) {
      const std::string alternative_text = TokenText(alternative.token_id());
      top.push_back({{"token", alternative_text},
                     {"logprob", Finite(alternative.logprob())},
                     {"bytes", Bytes(alternative_text)}});
    }
    content.push_back(
        {{"token", text}, {"logprob", Finite(token.logprob())}, {"bytes", Bytes(text)}, {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

}  // namespace indexcache::openai
