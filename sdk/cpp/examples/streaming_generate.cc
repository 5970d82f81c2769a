// Streams one prompt's answer to stdout as it is generated; --cancel-after N cancels the call once N
// tokens arrived, which frees the request's KV cache on the workers.
//   sdk_streaming_generate --router 127.0.0.1:7000 --prompt "Hello" --cancel-after 4
#include <iostream>

#include "example_flags.h"

int main(int argc, char** argv) {
  using namespace indexcache::client;
  const examples::ExampleFlags flags = examples::ParseFlags(argc, argv, {"cancel-after"});
  ClientOptions options;
  const GenerateRequest request = examples::RequestFromFlags(flags, options);
  int64_t cancel_after = -1;
  if (auto v = flags.Get("cancel-after"); v && !absl::SimpleAtoi(*v, &cancel_after)) {
    std::cerr << "--cancel-after is not a number\n";
    return 2;
  }

  absl::StatusOr<Client> client = Client::Connect(*flags.Get("router"), options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  GenerateStream stream = client->Stream(request);
  int64_t tokens = 0;
  bool cancelled = false;
  while (true) {
    absl::StatusOr<std::optional<GenerateChunk>> chunk = stream.Next();
    if (!chunk.ok() && chunk.status().code() == absl::StatusCode::kCancelled && cancelled) {
      std::cout << "\n[cancelled after " << tokens << " tokens]\n";
      return 0;
    }
    if (!chunk.ok()) {
      std::cerr << "\n" << chunk.status() << "\n";
      return 1;
    }
    if (!chunk->has_value()) break;
    const GenerateChunk& c = **chunk;
    if (c.text.empty()) {
      for (int32_t id : c.token_ids) std::cout << "[" << id << "]";
    } else {
      std::cout << c.text;
    }
    std::cout.flush();
    tokens += static_cast<int64_t>(c.token_ids.size());
    if (c.final) {
      std::cout << "\n[" << FinishReasonName(c.final->finish_reason) << ", " << c.final->generated_tokens
                << " tokens, first token " << c.final->timings.first_token_seconds << " s, "
                << c.final->timings.mean_inter_token_seconds << " s/token]\n";
    }
    if (cancel_after >= 0 && tokens >= cancel_after && !c.final) {
      stream.Cancel();  // the next Next() returns CANCELLED
      cancelled = true;
    }
  }
  return 0;
}
