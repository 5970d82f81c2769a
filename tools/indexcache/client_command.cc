// `indexcache client generate`: one request to a running cluster's router through the C++ SDK,
// streamed to stdout, or printed as one JSON object with --json.
#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/auth/secrets.h"
#include "common/util/status_macros.h"
#include "indexcache/client.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/commands.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache::cli {
namespace {

constexpr char kClientUsage[] =
    "usage: indexcache client generate --router ADDR (--prompt TEXT | --input-ids FILE.json) [--json]\n"
    "       [--timeout SECONDS] [--api-key-file FILE (the router's key)] [sampling flags]\n"
    "       [--tls-ca-file FILE (TLS, trusting these PEM CAs) [--tls-server-name NAME (the certificate's name,\n"
    "       when not the address's host)] [--tls-client-cert-file FILE --tls-client-key-file FILE]]\n"
    "       [--n N (choices, 1-16)] [--logprobs K (each token's logprob and its K most likely, 0-20)]\n"
    "       (--n > 1 and --logprobs print with --json only)\n";

absl::StatusOr<client::GenerateRequest> RequestFromArgs(const Args& args) {
  if (args.Has("prompt") == args.Has("input-ids")) {
    return absl::InvalidArgumentError("give exactly one of --prompt TEXT and --input-ids FILE.json");
  }
  client::GenerateRequest request;
  if (args.Has("prompt")) {
    request = client::GenerateRequest::FromText(*args.Get("prompt"));
  } else {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReadTokenIdsFile(*args.Get("input-ids")));
    request = client::GenerateRequest::FromIds(std::move(ids));
  }
  // Only flags the user gave are sent: the server applies its defaults to the rest.
  client::SamplingParams& s = request.sampling;
  ASSIGN_OR_RETURN(auto max_new, args.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(auto temperature, args.GetDouble("temperature"));
  ASSIGN_OR_RETURN(auto top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(auto top_p, args.GetDouble("top-p"));
  ASSIGN_OR_RETURN(auto min_p, args.GetDouble("min-p"));
  ASSIGN_OR_RETURN(auto seed, args.GetInt("seed"));
  ASSIGN_OR_RETURN(auto timeout, args.GetDouble("timeout"));
  ASSIGN_OR_RETURN(auto n, args.GetInt("n"));
  ASSIGN_OR_RETURN(auto logprobs, args.GetInt("logprobs"));
  if (((n && *n != 1) || logprobs) && !args.Has("json")) {
    return absl::InvalidArgumentError("--n > 1 and --logprobs print with --json only");
  }
  if (n) s.n = static_cast<int32_t>(*n);
  if (logprobs) {
    s.logprobs = true;
    s.top_logprobs = static_cast<int32_t>(*logprobs);
  }
  if (max_new) s.max_new_tokens = static_cast<int32_t>(*max_new);
  if (temperature) s.temperature = static_cast<float>(*temperature);
  if (top_k) s.top_k = static_cast<int32_t>(*top_k);
  if (top_p) s.top_p = static_cast<float>(*top_p);
  if (min_p) s.min_p = static_cast<float>(*min_p);
  if (seed) s.seed = static_cast<uint64_t>(*seed);
  if (args.Has("ignore-eos")) s.ignore_eos = true;
  s.stop = args.GetAll("stop");
  ASSIGN_OR_RETURN(SamplingParams parsed, SamplingParamsFromArgs(args));  // parses --stop-id
  s.stop_token_ids = parsed.stop_token_ids;
  if (timeout) request.timeout = absl::Seconds(*timeout);
  return request;
}

nlohmann::json LogprobsJson(const std::vector<client::TokenLogprobs>& tokens) {
  nlohmann::json out = nlohmann::json::array();
  for (const client::TokenLogprobs& token : tokens) {
    nlohmann::json top = nlohmann::json::array();
    for (const client::TokenLogprob& alternative : token.top_logprobs) {
      top.push_back({{"token_id", alternative.token_id}, {"logprob", alternative.logprob}});
    }
    out.push_back({{"token_id", token.token_id}, {"logprob", token.logprob}, {"top_logprobs", std::move(top)}});
  }
  return out;
}

// One choice's fields; the top-level object is choice 0's, and with --n > 1 `choices` lists every one.
nlohmann::json ChoiceJson(const client::Choice& r, const std::string& request_id, bool logprobs) {
  const client::Timings& t = r.final.timings;
  nlohmann::json out = {{"request_id", request_id},
          {"output_ids", r.output_ids},
          {"text", r.text},
          {"finish_reason", std::string(client::FinishReasonName(r.final.finish_reason))},
          {"error", r.final.error},
          {"prompt_tokens", r.final.prompt_tokens},
          {"generated_tokens", r.final.generated_tokens},
          {"index_pattern", r.final.index_pattern},
          {"prefill_worker", r.final.prefill_worker},
          {"decode_worker", r.final.decode_worker},
          {"timings",
           {{"queue_s", t.queue_seconds},
            {"prefill_s", t.prefill_seconds},
            {"handoff_s", t.handoff_seconds},
            {"first_token_s", t.first_token_seconds},
            {"total_s", t.total_seconds},
            {"mean_inter_token_s", t.mean_inter_token_seconds}}}};
  if (logprobs) out["logprobs"] = LogprobsJson(r.logprobs);
  return out;
}

nlohmann::json ResultJson(const client::GenerateResult& r, bool logprobs) {
  nlohmann::json out = ChoiceJson(r, r.request_id, logprobs);
  if (r.choices.size() > 1) {
    out["choices"] = nlohmann::json::array();
    for (const client::Choice& choice : r.choices) {
      nlohmann::json one = ChoiceJson(choice, r.request_id, logprobs);
      one["index"] = choice.index;
      out["choices"].push_back(std::move(one));
    }
  }
  return out;
}

// TLS with --tls-ca-file; plaintext without it, where the other TLS flags are refused.
absl::StatusOr<std::optional<client::TlsOptions>> TlsFromArgs(const Args& args) {
  if (!args.Has("tls-ca-file")) {
    for (const char* flag : {"tls-server-name", "tls-client-cert-file", "tls-client-key-file"}) {
      if (args.Has(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --tls-ca-file"));
    }
    return std::nullopt;
  }
  client::TlsOptions tls;
  tls.ca_certificates_file = *args.Get("tls-ca-file");
  tls.server_name = args.Get("tls-server-name").value_or("");
  tls.client_certificate_file = args.Get("tls-client-cert-file").value_or("");
  tls.client_key_file = args.Get("tls-client-key-file").value_or("");
  return tls;
}

absl::Status ClientGenerate(const Args& args) {
  ASSIGN_OR_RETURN(std::string router, args.Require("router"));
  ASSIGN_OR_RETURN(client::GenerateRequest request, RequestFromArgs(args));
  client::ClientOptions options;
  options.connect_timeout = absl::Seconds(10);
  if (auto key_file = args.Get("api-key-file")) {
    ASSIGN_OR_RETURN(options.api_key, ReadSecretFile(*key_file, "API key"));
  }
  ASSIGN_OR_RETURN(options.tls, TlsFromArgs(args));
  ASSIGN_OR_RETURN(client::Client client, client::Client::Connect(router, options));
  if (args.Has("json")) {
    ASSIGN_OR_RETURN(client::GenerateResult result, client.Generate(request));
    std::cout << ResultJson(result, request.sampling.logprobs.value_or(false)).dump() << std::endl;
    for (const client::Choice& choice : result.choices) {
      if (choice.final.finish_reason == client::FinishReason::kError) return absl::InternalError(choice.final.error);
    }
    return absl::OkStatus();
  }
  // Token ids are printed only for a model without a tokenizer: with one, a chunk without text holds
  // a stop token or part of a character whose text comes with a later chunk, and its id is no text.
  ASSIGN_OR_RETURN(const client::ModelInfo info, client.GetModelInfo());
  client::GenerateStream stream = client.Stream(request);
  for (;;) {
    ASSIGN_OR_RETURN(std::optional<client::GenerateChunk> chunk, stream.Next());
    if (!chunk) break;
    if (info.has_tokenizer) {
      std::cout << chunk->text << std::flush;
    } else {
      for (int32_t id : chunk->token_ids) std::cout << id << ' ' << std::flush;
    }
    if (chunk->final) {
      std::cout << std::endl;
      const client::FinalInfo& f = *chunk->final;
      std::cerr << absl::StrFormat("finish %s, %d prompt + %d generated tokens, first token %.3f s, total %.3f s\n",
                                   std::string(client::FinishReasonName(f.finish_reason)), f.prompt_tokens,
                                   f.generated_tokens, f.timings.first_token_seconds, f.timings.total_seconds);
      if (!f.index_pattern.empty()) {
        const int64_t full = std::count(f.index_pattern.begin(), f.index_pattern.end(), 'F');
        const int64_t layers = static_cast<int64_t>(f.index_pattern.size());
        std::cerr << absl::StrFormat(
            "IndexCache pattern %s: %d of %d layers run the indexer; the other %d reuse the top-k of the Full "
            "layer before them and store no index keys (%.0f%% of the indexer work and index-key cache saved)\n",
            f.index_pattern, full, layers, layers - full, 100.0 * static_cast<double>(layers - full) / layers);
      }
      if (f.finish_reason == client::FinishReason::kError) return absl::InternalError(f.error);
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunClient(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] != "generate") return Fail("client", std::string("expected `generate`\n") + kClientUsage);
  std::set<std::string> valued = SamplingFlagNames();
  valued.insert({"router", "prompt", "input-ids", "timeout", "api-key-file", "n", "logprobs", "tls-ca-file",
                 "tls-server-name", "tls-client-cert-file", "tls-client-key-file"});
  std::set<std::string> switches = SamplingSwitchNames();
  switches.insert({"json", "help"});
  auto args = Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()), valued, switches);
  if (!args.ok()) return Fail("client", std::string(args.status().message()) + "\n" + kClientUsage);
  if (args->Has("help")) {
    std::cout << kClientUsage << kSamplingFlagsUsage;
    return 0;
  }
  absl::Status status = ClientGenerate(*args);
  if (!status.ok()) return Fail("client", status.ToString());
  return 0;
}

}  // namespace indexcache::cli
