// Sends one prompt to a router, waits for the whole answer, prints it with the final info.
//   sdk_blocking_generate --router 127.0.0.1:7000 --prompt "Hello" --max-new-tokens 16
#include <iostream>

#include "example_flags.h"

int main(int argc, char** argv) {
  using namespace indexcache::client;
  const examples::ExampleFlags flags = examples::ParseFlags(argc, argv, {});
  ClientOptions options;
  const GenerateRequest request = examples::RequestFromFlags(flags, options);

  absl::StatusOr<Client> client = Client::Connect(*flags.Get("router"), options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  absl::StatusOr<GenerateResult> result = client->Generate(request);
  if (!result.ok()) {
    std::cerr << result.status() << "\n";
    return 1;
  }
  std::cout << "request " << result->request_id << "\ntext: " << result->text << "\nids:";
  for (int32_t id : result->output_ids) std::cout << " " << id;
  const FinalInfo& final = result->final;
  std::cout << "\nfinish: " << FinishReasonName(final.finish_reason)
            << (final.error.empty() ? "" : " (" + final.error + ")") << "\nprompt tokens "
            << final.prompt_tokens << ", generated " << final.generated_tokens << ", pattern "
            << final.index_pattern << "\nfirst token " << final.timings.first_token_seconds << " s, total "
            << final.timings.total_seconds << " s\n";
  return 0;
}
