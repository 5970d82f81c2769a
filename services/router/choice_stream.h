// A request's n choices (sampling.n, vLLM's and OpenAI's `n`): each choice is its own request through
// the router's queue and dispatch (its own workers, KV blocks, retries and migrations), and their
// streams merge into the client's one.
//
// ChoiceRequest gives each choice its sampling: choice i of a seeded request samples with seed + i, so
// the choices differ and a rerun repeats them; unseeded choices draw fresh seeds on the workers.
// ChoiceStreams hands each choice's GenerateCall a writer of its own, which stamps the choice's `index`
// and serializes the write with its siblings' (a grpc::ServerWriter takes one write at a time). The
// client reads the choices interleaved, each ending with its own `final` (generate.proto).
// RunChoices runs the calls side by side; when one fails, the others are aborted (their KV freed) and
// the request ends with that failure.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "grpcpp/support/status.h"

#include "grpcpp/support/sync_stream.h"
#include "indexcache/v1/generate.pb.h"

namespace indexcache {

// The client's request as choice `choice` runs it: n cleared, the seed (when given) plus `choice`.
v1::GenerateRequest ChoiceRequest(const v1::GenerateRequest& request, int choice);

// Runs run_choice(0 … choices-1) concurrently (choice 0 on the calling thread) and returns the first
// failure, or OK. After a failure, `abort_all` is called once, so that the other choices end.
grpc::Status RunChoices(int choices, const std::function<grpc::Status(int choice)>& run_choice,
                        const std::function<void()>& abort_all);

class ChoiceStreams {
 public:
  // `client` outlives this and has sent its first message (the request id).
  ChoiceStreams(grpc::ServerWriterInterface<v1::GenerateResponse>* client, int choices);

  // The writer of choice `index` (0 ≤ index < choices).
  grpc::ServerWriterInterface<v1::GenerateResponse>* choice(int index);
  ~ChoiceStreams();

 private:
  class ChoiceStream;

  grpc::ServerWriterInterface<v1::GenerateResponse>* const client_;
  std::mutex write_mu_;
  std::vector<std::unique_ptr<ChoiceStream>> choices_;
};

}  // namespace indexcache
