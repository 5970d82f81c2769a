// The `logprobs` object of an OpenAI choice, from the router's per-token TokenLogprobs (raw logprobs:
// common/sampling/logprobs.h), in the two shapes OpenAI's API documents:
//
//   completions (legacy, `logprobs: N`, N in 0–5):
//     {"tokens": [str], "token_logprobs": [float], "top_logprobs": [{str: float}], "text_offset": [int]}
//     where each top_logprobs entry holds the N most likely tokens and, as OpenAI's API does, the
//     chosen token too (up to N + 1 entries); text_offset is each token's offset in the choice's text,
//     counted in UTF-8 bytes of the tokens' own texts.
//   chat (`logprobs: true`, `top_logprobs: N`, N in 0–20):
//     {"content": [{"token": str, "logprob": float, "bytes": [int], "top_logprobs": [{"token", "logprob", "bytes"}]}]}
//
// A token's string is its bytes from the model's tokenizer (a token may hold part of a UTF-8
// character: Dump turns such bytes into U+FFFD, `bytes` keeps them exact); without a tokenizer it is
// "token_id:<id>", vLLM's spelling. A -inf log-probability reads as -9999.0, as vLLM writes it (JSON
// has no infinity).
#pragma once

#include <cstdint>

#include "google/protobuf/repeated_ptr_field.h"
#include "indexcache/v1/generate.pb.h"
#include "nlohmann/json.hpp"
#include "common/tokenizer/bpe_tokenizer.h"

namespace indexcache::openai {

using TokenLogprobsList = google::protobuf::RepeatedPtrField<v1::TokenLogprobs>;

class LogprobsFormatter {
 public:
  // `tokenizer` (may be null) outlives this.
  explicit LogprobsFormatter(const BpeTokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // The completions shape for `tokens`, the first of which starts at `text_offset`; returns the offset
  // after the last token in `next_offset` (a stream's next chunk continues from it).
  nlohmann::json Completions(const TokenLogprobsList& tokens, int64_t text_offset, int64_t* next_offset) const;
  // The chat shape for `tokens`.
  nlohmann::json Chat(const TokenLogprobsList& tokens) const;

 private:
  std::string TokenText(int32_t token_id) const;

  const BpeTokenizer* const tokenizer_;
};

}  // namespace indexcache::openai
