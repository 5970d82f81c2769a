#include "services/openai/chat_template.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace indexcache::openai {
namespace {

absl::StatusOr<std::string> Content(const nlohmann::json& message, size_t index) {
  const auto it = message.find("content");
  if (it == message.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("messages[%d].content must be a string or an array of text parts", index));
  }
  std::string text;
  for (const nlohmann::json& part : *it) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "messages[%d].content: only parts of type \"text\" with a string `text` are supported", index));
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Load(const std::string& model_dir) {
  ChatTemplate chat_template;
  const std::filesystem::path path = std::filesystem::path(model_dir) / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return chat_template;
  std::ifstream in(path);
  const nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not valid JSON"));
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    chat_template.note_ = absl::StrCat(path.string(),
                                       " has a Jinja chat_template, which this server does not render; chat "
                                       "requests use the default template");
    IC_LOG(Warning) << chat_template.note_;
  }
  return chat_template;
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& messages) const {
  if (!messages.is_array() || messages.empty()) {
    return absl::InvalidArgumentError("`messages` must be a non-empty array");
  }
  std::string prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& message = messages[i];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return absl::InvalidArgumentError(absl::StrFormat("messages[%d] needs a string `role`", i));
    }
    std::string role = message["role"].get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "messages[%d].role is '%s': only system, developer, user and assistant are supported", i, role));
    }
    ASSIGN_OR_RETURN(const std::string content, Content(message, i));
    absl::StrAppend(&prompt, "<|", role, "|>\n", content);
  }
  absl::StrAppend(&prompt, "<|assistant|>\n");
  return prompt;
}

std::vector<std::string> ChatTemplate::StopStrings() { return {"<|user|>", "<|system|>", "<|assistant|>"}; }

}  // namespace indexcache::openai
