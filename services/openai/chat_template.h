// Turns chat messages into the prompt text the model continues. Hugging Face checkpoints carry their
// template as Jinja in tokenizer_config.json's `chat_template`; no Jinja engine is packaged for C++ in
// Debian, so this server renders one documented default and says so (ChatTemplate::source(), shown
// by GET /v1/models), rather than guessing at a template it cannot evaluate:
//
//   <|system|>\n{content}<|user|>\n{content}<|assistant|>\n{content}…<|assistant|>\n
//
// one `<|role|>\n` header per message (role system, user or assistant; `developer` counts as system),
// the contents as given, and an open assistant header at the end. The role headers are GLM's (the
// architecture served here). A chat request also stops at any role header the model writes (stop
// strings "<|user|>", "<|system|>", "<|assistant|>"), so an answer ends at its own turn.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace indexcache::openai {

class ChatTemplate {
 public:
  // Reads `model_dir`/tokenizer_config.json when present (only to report its template, see above).
  static absl::StatusOr<ChatTemplate> Load(const std::string& model_dir);

  // The prompt for OpenAI `messages`: [{"role": "...", "content": "..." | [{"type": "text", "text":
  // "..."}, …]}, …]. INVALID_ARGUMENT naming the message for an unknown role, content that is
  // neither a string nor text parts, or no messages.
  absl::StatusOr<std::string> Render(const nlohmann::json& messages) const;

  // The stop strings every chat request gets: the role headers.
  static std::vector<std::string> StopStrings();

  // "default" and, when the checkpoint has a template this server does not render, why.
  const std::string& source() const { return source_; }
  const std::string& note() const { return note_; }

 private:
  std::string source_ = "default";
  std::string note_;
};

}  // namespace indexcache::openai
