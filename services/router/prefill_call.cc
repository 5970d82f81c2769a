#include "services/router/prefill_call.h"

#include <utility>

#include "services/common/handoff_failed.h"

namespace indexcache {

PrefillCall::PrefillCall(v1::PrefillWorker::StubInterface& stub, grpc::ClientContext& context,
                         v1::PrefillRequest request, Handlers handlers)
    : request_(std::move(request)), handlers_(std::move(handlers)) {
  thread_ = std::thread([this, &stub, &context] { Read(stub, context); });
}

PrefillCall::~PrefillCall() { thread_.join(); }

void PrefillCall::Read(v1::PrefillWorker::StubInterface& stub, grpc::ClientContext& context) {
  std::unique_ptr<grpc::ClientReaderInterface<v1::PrefillResponse>> reader = stub.Prefill(&context, request_);
  v1::PrefillResponse message;
  bool first_token = false;
  bool done = false;
  while (reader->Read(&message)) {
    if (message.has_first_token() && !first_token) {
      first_token = true;
      if (!handlers_.on_first_token(message.first_token())) {
        context.TryCancel();
        continue;  // drains to the cancelled end
      }
      std::lock_guard<std::mutex> lock(mu_);
      first_token_relayed_ = true;
      changed_.notify_all();
    } else if (message.has_done()) {
      done = true;
      done_ = message.done();
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    const auto& trailers = context.GetServerTrailingMetadata();
    handoff_failed_ = trailers.find(grpc::string_ref(kHandoffFailedMetadata.data(), kHandoffFailedMetadata.size())) !=
                      trailers.end();
  }
  if (status.ok() && !(first_token && done)) {
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          first_token ? "the Prefill stream ended without its `done` message"
                                      : "the Prefill stream ended without the first token");
  }
  handlers_.on_end(status);
  std::lock_guard<std::mutex> lock(mu_);
  status_ = std::move(status);
  ended_ = true;
  changed_.notify_all();
}

bool PrefillCall::AwaitFirstToken() {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return first_token_relayed_ || ended_; });
  return first_token_relayed_;
}

grpc::Status PrefillCall::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return ended_; });
  return status_;
}

}  // namespace indexcache
