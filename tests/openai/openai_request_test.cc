// The OpenAI request bodies → indexcache.v1.GenerateRequest translation, the default chat template and
// the error shape. Values are checked by the router, not here: these tests pin only shapes and refusals.
#include "services/openai/openai_request.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <tuple>
#include <vector>

#include "services/openai/openai_error.h"

namespace indexcache::openai {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kModel[] = "tiny";

absl::StatusOr<OpenAiRequest> Parse(Endpoint endpoint, const nlohmann::json& body) {
  return ParseRequest(endpoint, body.dump(), kModel, ChatTemplate());
}

TEST(OpenAiRequestTest, CompletionCarriesEverySamplingField) {
  const auto r = Parse(Endpoint::kCompletions,
                       {{"model", kModel}, {"prompt", "Hello"}, {"max_tokens", 7}, {"temperature", 0.5},
                        {"top_p", 0.9}, {"top_k", 40}, {"min_p", 0.05}, {"seed", -1}, {"stop", {"a", "b"}},
                        {"stop_token_ids", {9}}, {"ignore_eos", true}, {"stream", true},
                        {"stream_options", {{"include_usage", true}}}, {"return_token_ids", true}});
  ASSERT_TRUE(r.ok()) << r.status();
  const v1::SamplingParameters& s = r->generate.sampling();
  EXPECT_EQ(r->generate.text(), "Hello");
  EXPECT_EQ(s.max_new_tokens(), 7);
  EXPECT_FLOAT_EQ(s.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(s.top_k(), 40);
  EXPECT_FLOAT_EQ(s.min_p(), 0.05f);
  EXPECT_EQ(s.seed(), UINT64_MAX);  // -1's bits
  EXPECT_THAT(s.stop(), ElementsAre("a", "b"));
  EXPECT_THAT(s.stop_token_ids(), ElementsAre(9));
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->return_token_ids);
}

TEST(OpenAiRequestTest, UnsetFieldsStayUnsetExceptCompletionsMaxTokens) {
  const auto completion = Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"temperature", nullptr}});
  ASSERT_TRUE(completion.ok()) << completion.status();
  EXPECT_EQ(completion->generate.sampling().max_new_tokens(), kCompletionsDefaultMaxTokens);
  EXPECT_FALSE(completion->generate.sampling().has_temperature());
  EXPECT_FALSE(completion->generate.sampling().has_seed());
  const auto chat = Parse(Endpoint::kChat, {{"messages", {{{"role", "user"}, {"content", "x"}}}}});
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_FALSE(chat->generate.sampling().has_max_new_tokens());
}

TEST(OpenAiRequestTest, PromptShapes) {
  auto ids = Parse(Endpoint::kCompletions, {{"prompt", {5, 6, 7}}});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(ids->generate.token_ids().ids(), ElementsAre(5, 6, 7));
  auto nested = Parse(Endpoint::kCompletions, {{"prompt", {{5, 6}}}});
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_THAT(nested->generate.token_ids().ids(), ElementsAre(5, 6));
  auto one_text = Parse(Endpoint::kCompletions, {{"prompt", {"hi"}}});
  ASSERT_TRUE(one_text.ok()) << one_text.status();
  EXPECT_EQ(one_text->generate.text(), "hi");
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", {"a", "b"}}}).status().message(), HasSubstr("batch of 2"));
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", 3}}).status().message(), HasSubstr("`prompt` must be"));
  EXPECT_THAT(Parse(Endpoint::kCompletions, nlohmann::json::object()).status().message(), HasSubstr("`prompt` is required"));
}

TEST(OpenAiRequestTest, RefusesWhatItDoesNotOffer) {
  const nlohmann::json base = {{"prompt", "x"}};
  for (const auto& [field, value, phrase] : std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"best_of", 3, "best_of"}, {"echo", true, "echo"}, {"suffix", "s", "suffix"},
           {"presence_penalty", 0.5, "presence_penalty"}, {"logit_bias", {{"5", 1}}, "logit_bias"}}) {
    nlohmann::json body = base;
    body[field] = value;
    const absl::Status status = Parse(Endpoint::kCompletions, body).status();
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << field;
    EXPECT_THAT(status.message(), HasSubstr(phrase));
  }
  // The neutral values OpenAI's clients may send are accepted.
  EXPECT_TRUE(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"n", 1}, {"presence_penalty", 0}, {"logprobs", nullptr}}).ok());
}

TEST(OpenAiRequestTest, ChoicesAndLogprobsReachTheSampling) {
  // n goes through as given: the router bounds it, for gRPC and HTTP clients alike.
  for (int n : {1, 2, 99}) {
    const auto r = Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"n", n}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->generate.sampling().n(), n);
  }
  const auto unset = Parse(Endpoint::kCompletions, {{"prompt", "x"}});
  ASSERT_TRUE(unset.ok());
  EXPECT_FALSE(unset->generate.sampling().has_n());
  EXPECT_FALSE(unset->generate.sampling().logprobs());

  // Completions: the legacy integer, 0–5.
  for (int k : {0, 3, kCompletionsMaxLogprobs}) {
    const auto r = Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"logprobs", k}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->generate.sampling().logprobs());
    EXPECT_EQ(r->generate.sampling().top_logprobs(), k);
  }
  for (int k : {-1, kCompletionsMaxLogprobs + 1}) {
    const absl::Status status = Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"logprobs", k}}).status();
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << k;
    EXPECT_THAT(status.message(), HasSubstr("`logprobs` must be in [0, 5]"));
  }
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"logprobs", true}}).status().message(),
              HasSubstr("`logprobs` must be an integer"));

  // Chat: a boolean, and top_logprobs (its range is the router's).
  const nlohmann::json messages = {{{"role", "user"}, {"content", "x"}}};
  const auto chat = Parse(Endpoint::kChat, {{"messages", messages}, {"logprobs", true}, {"top_logprobs", 7}});
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_TRUE(chat->generate.sampling().logprobs());
  EXPECT_EQ(chat->generate.sampling().top_logprobs(), 7);
  const auto off = Parse(Endpoint::kChat, {{"messages", messages}, {"logprobs", false}});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->generate.sampling().has_logprobs());
  EXPECT_THAT(Parse(Endpoint::kChat, {{"messages", messages}, {"logprobs", 2}}).status().message(),
              HasSubstr("`logprobs` must be true or false"));
}

TEST(OpenAiRequestTest, TypesAndModel) {
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"temperature", "hot"}}).status().message(),
              HasSubstr("`temperature` must be a number"));
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"max_tokens", 1.5}}).status().message(),
              HasSubstr("`max_tokens` must be an integer"));
  EXPECT_TRUE(absl::IsNotFound(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"model", "other"}}).status()));
  EXPECT_THAT(ParseRequest(Endpoint::kCompletions, "{not json", kModel, ChatTemplate()).status().message(),
              HasSubstr("JSON object"));
  EXPECT_THAT(Parse(Endpoint::kCompletions, {{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}})
                  .status()
                  .message(),
              HasSubstr("only allowed with `stream: true`"));
}

TEST(OpenAiRequestTest, ChatRendersTheDefaultTemplateAndStopsAtRoleHeaders) {
  const auto r = Parse(Endpoint::kChat,
                       {{"messages",
                         {{{"role", "developer"}, {"content", "Be brief."}},
                          {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi "}}, {{"type", "text"}, {"text", "there"}}}}},
                          {{"role", "assistant"}, {"content", "Hello."}},
                          {{"role", "user"}, {"content", "Bye"}}}},
                        {"max_completion_tokens", 5},
                        {"stop", "END"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generate.text(), "<|system|>\nBe brief.<|user|>\nHi there<|assistant|>\nHello.<|user|>\nBye<|assistant|>\n");
  EXPECT_EQ(r->generate.sampling().max_new_tokens(), 5);
  EXPECT_THAT(r->generate.sampling().stop(), ElementsAre("<|user|>", "<|system|>", "<|assistant|>", "END"));
  EXPECT_THAT(Parse(Endpoint::kChat, {{"messages", {{{"role", "tool"}, {"content", "x"}}}}}).status().message(),
              HasSubstr("messages[0].role is 'tool'"));
  EXPECT_THAT(Parse(Endpoint::kChat, {{"messages", nlohmann::json::array()}}).status().message(), HasSubstr("non-empty"));
}

TEST(ChatTemplateTest, ReportsACheckpointTemplateItDoesNotRender) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "openai_request_test_model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})";
  const absl::StatusOr<ChatTemplate> loaded = ChatTemplate::Load(dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->source(), "default");
  EXPECT_THAT(loaded->note(), HasSubstr("does not render"));
  std::filesystem::remove_all(dir);
  const absl::StatusOr<ChatTemplate> plain = ChatTemplate::Load(dir.string());
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->note().empty());
}

TEST(OpenAiErrorTest, StatusesAndShape) {
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusOf(absl::StatusCode::kInternal), 500);
  const nlohmann::json body = ErrorBody(absl::NotFoundError("no model x"), "model_not_found");
  EXPECT_EQ(body["error"]["message"], "no model x");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["code"], "model_not_found");
  EXPECT_TRUE(body["error"]["param"].is_null());
}

}  // namespace
}  // namespace indexcache::openai
