// Streaming detokenization: token ids in, one at a time; text out as soon as it is whole.
//
// A byte-level token can end inside a multi-byte UTF-8 character (an emoji is often 2-4 tokens),
// and a client must never see half a character. Push returns the text completed by this id and
// holds back a trailing incomplete-but-so-far-valid sequence until the next ids complete it.
// Every chunk is valid UTF-8: ill-formed bytes (which only a model emitting odd ids produces) are
// replaced by U+FFFD, as HF decode does, so the chunks concatenate to Utf8Lossy(Decode(ids)) —
// i.e. to Decode(ids) whenever that is valid UTF-8.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/tokenizer/bpe_tokenizer.h"

namespace indexcache {

class IncrementalDecoder {
 public:
  // `tokenizer` must outlive the decoder.
  explicit IncrementalDecoder(const BpeTokenizer* tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Feeds one id; returns the newly completed text (possibly empty). An invalid id is refused
  // and leaves the decoder unchanged.
  absl::StatusOr<std::string> Push(int32_t id);

  // Ends the stream: returns what is held back (an unfinished character becomes U+FFFD).
  std::string Flush();

 private:
  const BpeTokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // at most 3 bytes: the start of a character not yet complete
};

}  // namespace indexcache
