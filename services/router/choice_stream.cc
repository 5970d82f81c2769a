#include "services/router/choice_stream.h"

#include <thread>

namespace indexcache {

v1::GenerateRequest ChoiceRequest(const v1::GenerateRequest& request, int choice) {
  v1::GenerateRequest one = request;
  one.mutable_sampling()->clear_n();
  // Unsigned, so seed + choice wraps instead of overflowing.
  if (one.sampling().has_seed()) one.mutable_sampling()->set_seed(one.sampling().seed() + static_cast<uint64_t>(choice));
  return one;
}

grpc::Status RunChoices(int choices, const std::function<grpc::Status(int choice)>& run_choice,
                        const std::function<void()>& abort_all) {
  std::mutex mu;
  grpc::Status first_failure;
  const auto run = [&](int choice) {
    const grpc::Status status = run_choice(choice);
    if (status.ok()) return;
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (first_failure.ok()) {
        first_failure = status;
        first = true;
      }
    }
    if (first) abort_all();
  };
  std::vector<std::thread> others;
  for (int choice = 1; choice < choices; ++choice) others.emplace_back(run, choice);
  run(0);
  for (std::thread& thread : others) thread.join();
  return first_failure;
}

class ChoiceStreams::ChoiceStream final : public grpc::ServerWriterInterface<v1::GenerateResponse> {
 public:
  ChoiceStream(ChoiceStreams* streams, int index) : streams_(streams), index_(index) {}

  // The metadata went out with the request id's message, before any choice started.
  void SendInitialMetadata() override {}

  bool Write(const v1::GenerateResponse& message, grpc::WriteOptions options) override {
    v1::GenerateResponse stamped = message;
    stamped.set_index(index_);
    std::lock_guard<std::mutex> lock(streams_->write_mu_);
    return streams_->client_->Write(stamped, options);
  }

 private:
  ChoiceStreams* const streams_;
  const int index_;
};

ChoiceStreams::ChoiceStreams(grpc::ServerWriterInterface<v1::GenerateResponse>* client, int choices)
    : client_(client) {
  for (int i = 0; i < choices; ++i) choices_.push_back(std::make_unique<ChoiceStream>(this, i));
}

ChoiceStreams::~ChoiceStreams() = default;

grpc::ServerWriterInterface<v1::GenerateResponse>* ChoiceStreams::choice(int index) { return choices_.at(index).get(); }

}  // namespace indexcache
