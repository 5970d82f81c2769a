// In-process stand-ins for the prefill and decode workers, for testing the router alone: each serves
// its internal.proto service and grpc.health.v1 on a loopback port, answers from a script (load,
// tokens, failures, delays) and records what the router asked of it (requests, deadlines, aborts).
#pragma once

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "services/common/handoff_failed.h"
#include "tests/cluster_token_for_tests.h"

namespace indexcache::testing {

namespace v1 = ::indexcache::v1;

// What a fake was asked; guarded by `mu`.
struct FakeLog {
  mutable std::mutex mu;
  int running = 0;                              // calls admitted and not finished
  int max_running = 0;                          // the most at once
  int refused = 0;                              // calls answered RESOURCE_EXHAUSTED
  std::vector<std::string> requests;            // request ids by label (LabelOf), in arrival order
  std::vector<std::string> full_ids;            // the same ids as they arrived
  std::vector<std::vector<int32_t>> prompts;    // their prompt ids
  std::vector<int32_t> resumed_tokens;          // their resumed_tokens (a migrated stream's)
  std::vector<int32_t> max_new_tokens;          // their sampling.max_new_tokens (0: unset)
  std::vector<absl::Time> deadlines;            // their calls' deadlines
  std::vector<std::string> handoff_addresses;   // prefill: where it was told to push
  std::vector<v1::HandoffTransport> transports;
  std::vector<std::string> aborts;              // request ids of Abort calls

  template <typename T>
  std::vector<T> Copy(const std::vector<T> FakeLog::*field) const {
    std::lock_guard<std::mutex> lock(mu);
    return this->*field;
  }
  // Counts a call as running while the returned guard lives.
  auto Run() {
    {
      std::lock_guard<std::mutex> lock(mu);
      max_running = std::max(max_running, ++running);
    }
    auto end = [this](FakeLog*) {
      std::lock_guard<std::mutex> lock(mu);
      --running;
    };
    return std::unique_ptr<FakeLog, decltype(end)>(this, end);
  }
  int Get(const int FakeLog::*field) const {
    std::lock_guard<std::mutex> lock(mu);
    return this->*field;
  }
  bool Aborted(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu);
    for (const std::string& a : aborts) {
      if (a == id) return true;
    }
    return false;
  }
};

// A worker-side request id with the router's random part taken out, so tests name requests by the
// label they sent: "relay-1-<32 hex digits>#retry1" → "relay-1#retry1". Ids without one stay as they are.
inline std::string LabelOf(const std::string& id) {
  const size_t end = std::min(id.find('#'), id.size());
  constexpr size_t kHex = 32;
  if (end < kHex + 1 || id[end - kHex - 1] != '-') return id;
  for (size_t i = end - kHex; i < end; ++i) {
    if (!std::isxdigit(static_cast<unsigned char>(id[i]))) return id;
  }
  return id.substr(0, end - kHex - 1) + id.substr(end);
}

// Waits (polling) until `condition` holds, for at most `timeout`.
template <typename F>
bool WaitFor(F condition, absl::Duration timeout = absl::Seconds(5)) {
  const absl::Time end = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// Blocks a handler until Release() or until its call is cancelled.
class Gate {
 public:
  explicit Gate(bool closed) : closed_(closed) {}
  void Release() { closed_ = false; }
  // False when the call was cancelled while waiting.
  bool Pass(grpc::ServerContext* context) const {
    while (closed_) {
      if (context->IsCancelled()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
  }

 private:
  std::atomic<bool> closed_;
};

struct DecodeScript {
  std::string worker_id = "d0";
  int32_t running_sequences = 0;
  int32_t free_kv_blocks = 100;
  // > 0: the worker reports its block size and a cache of `total_kv_blocks`, and admits like the
  // engine — prompt + 1 tokens' blocks reserved until the call ends, RESOURCE_EXHAUSTED when short.
  int32_t kv_block_size = 0;
  int32_t total_kv_blocks = 100;
  bool hold_admission = false;           // wait for admission_gate.Release() before `admitted`
  grpc::Status fail_before_admitted = grpc::Status::OK;  // not OK: the Decode call ends with it before `admitted`
  int fail_first_calls = 0;              // the first N Decode calls end with `failure` before `admitted`
  std::vector<int32_t> tokens = {11, 12, 13};
  int fail_after_tokens = -1;            // >= 0: after that many tokens the call ends with `failure`
  grpc::Status failure = grpc::Status(grpc::StatusCode::INTERNAL, "simulated decode failure");
  bool endless = false;                  // tokens until cancelled
  absl::Duration token_delay = absl::ZeroDuration();
};

struct PrefillScript {
  std::string worker_id = "p0";
  int64_t queued_prompt_tokens = 0;
  // > 0: reported, and enforced like PrefillService::Admit (RESOURCE_EXHAUSTED past it unless idle).
  int64_t max_queued_prompt_tokens = 0;
  int refuse_first = 0;                     // the first N Prefill calls answer RESOURCE_EXHAUSTED
  absl::Duration delay = absl::ZeroDuration();  // how long a prefill takes
  grpc::Status failure = grpc::Status::OK;  // not OK: Prefill ends with it
  // Between the first token and the completed handoff (the handoff's last rows).
  absl::Duration tail_delay = absl::ZeroDuration();
  // > 0: the handoff completes first and the first token follows this much later (D's stream races
  // ahead of it).
  absl::Duration first_token_lag = absl::ZeroDuration();
  // Not OK: after the first token, the call ends with it (the handoff never completes).
  grpc::Status fail_after_first_token = grpc::Status::OK;
  // Handoffs to this address break after the first token: the call ends UNAVAILABLE marked as the
  // decode worker's doing (services/common/handoff_failed.h), as a real prefill worker's does.
  std::string break_handoffs_to = "";
  // Between the completed handoff and the answer (a real worker's ack flight and cleanup).
  absl::Duration answer_delay = absl::ZeroDuration();
  double prefill_seconds = 0.25;
  double handoff_seconds = 0.125;
};

template <typename Service>
class FakeServer {
 public:
  // Serves `service` and health on 127.0.0.1:<any>.
  void Serve(Service* service) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  // A crash, as far as its clients can tell: the port closes and calls in progress are cancelled.
  void Kill() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
  }
  const std::string& address() const { return address_; }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

// The fakes' stand-in for the KV handoff: a fake prefill worker that succeeds marks its request id
// handed off, and a fake decode worker streams a request's tokens only once it is — as a real one
// decodes only after a complete handoff — or gives up when the router cancels its call.
class FakeHandoffs {
 public:
  static FakeHandoffs& Get() {
    static FakeHandoffs handoffs;
    return handoffs;
  }
  // The decode worker's first token for `request_id`, which the prefill worker streams (a real pair
  // computes the same token on both sides).
  void PlanFirstToken(const std::string& request_id, int32_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    first_tokens_[request_id] = token;
  }
  std::optional<int32_t> FirstToken(const std::string& request_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = first_tokens_.find(request_id);
    if (it == first_tokens_.end()) return std::nullopt;
    return it->second;
  }
  void Complete(const std::string& request_id) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_.insert(request_id);
    }
    changed_.notify_all();
  }
  // False when `context` was cancelled first.
  bool Wait(const std::string& request_id, grpc::ServerContext* context) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_.contains(request_id)) {
      if (context->IsCancelled()) return false;
      changed_.wait_for(lock, std::chrono::milliseconds(5));
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  std::set<std::string> done_;  // guarded by mu_
  std::map<std::string, int32_t> first_tokens_;  // guarded by mu_
};

class FakeDecodeWorker final : public v1::DecodeWorker::Service {
 public:
  explicit FakeDecodeWorker(DecodeScript script) : script_(std::move(script)), gate_(script_.hold_admission) {
    server_.Serve(this);
  }
  ~FakeDecodeWorker() override { server_.Kill(); }

  grpc::Status Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                      grpc::ServerWriter<v1::DecodeResponse>* writer) override {
    {
      std::lock_guard<std::mutex> lock(log.mu);
      log.requests.push_back(LabelOf(request->request_id()));
      log.full_ids.push_back(request->request_id());
      log.prompts.emplace_back(request->prompt_ids().begin(), request->prompt_ids().end());
      log.resumed_tokens.push_back(request->resumed_tokens());
      log.max_new_tokens.push_back(request->sampling().max_new_tokens());
      log.deadlines.push_back(absl::FromChrono(context->deadline()));
      log.transports.push_back(request->transport());
    }
    if (!gate_.Pass(context)) return grpc::Status::CANCELLED;
    if (!script_.fail_before_admitted.ok()) return script_.fail_before_admitted;
    if (static_cast<int>(log.Copy(&FakeLog::requests).size()) <= script_.fail_first_calls) return script_.failure;
    const int32_t size = script_.kv_block_size;
    const int32_t blocks = size > 0 ? (request->prompt_ids_size() + 1 + size - 1) / size : 0;
    {
      std::lock_guard<std::mutex> lock(log.mu);
      if (used_blocks_ + blocks > script_.total_kv_blocks) {
        ++log.refused;
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of KV cache memory");
      }
      used_blocks_ += blocks;
    }
    auto running = log.Run();
    struct Free {
      FakeDecodeWorker* w;
      int32_t blocks;
      ~Free() {
        std::lock_guard<std::mutex> lock(w->log.mu);
        w->used_blocks_ -= blocks;
      }
    } free{this, blocks};
    v1::DecodeResponse admitted;
    admitted.mutable_admitted()->set_handoff_address("handoff." + script_.worker_id);
    admitted.mutable_admitted()->set_reserved_blocks(1);
    if (script_.endless || !script_.tokens.empty()) {
      FakeHandoffs::Get().PlanFirstToken(request->request_id(), script_.endless ? 7 : script_.tokens[0]);
    }
    writer->Write(admitted);
    if (!FakeHandoffs::Get().Wait(request->request_id(), context)) return grpc::Status::CANCELLED;
    int sent = 0;
    for (size_t i = 0; script_.endless || i < script_.tokens.size(); ++i) {
      if (context->IsCancelled()) return grpc::Status::CANCELLED;
      if (sent == script_.fail_after_tokens) return script_.failure;
      if (i == 0 && request->first_token_from_prefill()) {  // the caller has it from the prefill worker
        ++sent;
        continue;
      }
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(script_.token_delay));
      v1::DecodeResponse token;
      token.add_token_ids(script_.endless ? 7 : script_.tokens[i]);
      token.set_text("t");
      if (!writer->Write(token)) return grpc::Status::CANCELLED;
      ++sent;
    }
    v1::DecodeResponse last;
    last.mutable_final()->set_finish_reason(v1::LENGTH);
    last.mutable_final()->set_generated_tokens(sent);
    writer->Write(last);
    return grpc::Status::OK;
  }

  grpc::Status Abort(grpc::ServerContext*, const v1::WorkerAbortRequest* request,
                     v1::WorkerAbortResponse* response) override {
    std::lock_guard<std::mutex> lock(log.mu);
    log.aborts.push_back(LabelOf(request->request_id()));
    response->set_found(true);
    return grpc::Status::OK;
  }

  grpc::Status GetLoad(grpc::ServerContext*, const v1::LoadRequest*, v1::WorkerLoad* load) override {
    *load = Load();
    return grpc::Status::OK;
  }

  v1::WorkerLoad Load() const {
    v1::WorkerLoad load;
    load.set_worker_id(script_.worker_id);
    load.set_role(v1::DECODE);
    load.set_running_sequences(script_.running_sequences);
    if (script_.kv_block_size > 0) {
      std::lock_guard<std::mutex> lock(log.mu);
      load.set_kv_block_size(script_.kv_block_size);
      load.set_free_kv_blocks(script_.total_kv_blocks - used_blocks_);
      load.set_total_kv_blocks(script_.total_kv_blocks);
    } else {
      load.set_free_kv_blocks(script_.free_kv_blocks);
      load.set_total_kv_blocks(100);
    }
    return load;
  }
  const std::string& address() const { return server_.address(); }
  const std::string& id() const { return script_.worker_id; }
  void ReleaseAdmission() { gate_.Release(); }
  void Kill() { server_.Kill(); }

  FakeLog log;

 private:
  const DecodeScript script_;
  Gate gate_;
  int32_t used_blocks_ = 0;  // guarded by log.mu
  FakeServer<FakeDecodeWorker> server_;
};

class FakePrefillWorker final : public v1::PrefillWorker::Service {
 public:
  explicit FakePrefillWorker(PrefillScript script) : script_(std::move(script)) { server_.Serve(this); }
  ~FakePrefillWorker() override { server_.Kill(); }

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       grpc::ServerWriter<v1::PrefillResponse>* writer) override {
    {
      std::lock_guard<std::mutex> lock(log.mu);
      log.requests.push_back(LabelOf(request->request_id()));
      log.full_ids.push_back(request->request_id());
      log.prompts.emplace_back(request->prompt_ids().begin(), request->prompt_ids().end());
      log.resumed_tokens.push_back(request->resumed_tokens());
      log.max_new_tokens.push_back(request->sampling().max_new_tokens());
      log.deadlines.push_back(absl::FromChrono(context->deadline()));
      log.handoff_addresses.push_back(request->handoff_address());
      log.transports.push_back(request->transport());
    }
    {
      std::lock_guard<std::mutex> lock(log.mu);
      const bool over_bound = script_.max_queued_prompt_tokens > 0 && queued_tokens_ > 0 &&
                              queued_tokens_ + request->prompt_ids_size() > script_.max_queued_prompt_tokens;
      if (static_cast<int>(log.requests.size()) <= script_.refuse_first || over_bound) {
        ++log.refused;
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "prefill worker is full");
      }
      queued_tokens_ += request->prompt_ids_size();
    }
    auto running = log.Run();
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(script_.delay));
    {
      std::lock_guard<std::mutex> lock(log.mu);
      queued_tokens_ -= request->prompt_ids_size();
    }
    if (!script_.failure.ok()) return script_.failure;
    const std::optional<int32_t> first = FakeHandoffs::Get().FirstToken(request->request_id());
    const auto send_first_token = [&] {
      if (!first.has_value()) return;
      v1::PrefillResponse token;
      token.mutable_first_token()->set_token_id(*first);
      token.mutable_first_token()->set_text("t");
      writer->Write(token);
    };
    if (script_.first_token_lag > absl::ZeroDuration()) {
      FakeHandoffs::Get().Complete(request->request_id());
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(script_.first_token_lag));
      send_first_token();
    } else {
      send_first_token();
      if (!script_.fail_after_first_token.ok()) return script_.fail_after_first_token;
      if (request->handoff_address() == script_.break_handoffs_to) {
        context->AddTrailingMetadata(std::string(kHandoffFailedMetadata), "true");
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "handoff: reading a handoff frame: Connection reset by peer");
      }
      std::this_thread::sleep_for(absl::ToChronoNanoseconds(script_.tail_delay));
      FakeHandoffs::Get().Complete(request->request_id());
    }
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(script_.answer_delay));
    v1::PrefillResponse done;
    done.mutable_done()->set_first_token(first.value_or(-1));
    done.mutable_done()->set_prefill_seconds(script_.prefill_seconds);
    done.mutable_done()->set_handoff_seconds(script_.handoff_seconds);
    writer->Write(done);
    return grpc::Status::OK;
  }

  grpc::Status Abort(grpc::ServerContext*, const v1::WorkerAbortRequest* request,
                     v1::WorkerAbortResponse* response) override {
    std::lock_guard<std::mutex> lock(log.mu);
    log.aborts.push_back(LabelOf(request->request_id()));
    response->set_found(false);
    return grpc::Status::OK;
  }

  grpc::Status GetLoad(grpc::ServerContext*, const v1::LoadRequest*, v1::WorkerLoad* load) override {
    load->set_worker_id(script_.worker_id);
    load->set_role(v1::PREFILL);
    std::lock_guard<std::mutex> lock(log.mu);
    load->set_queued_prompt_tokens(script_.queued_prompt_tokens + queued_tokens_);
    load->set_max_queued_prompt_tokens(script_.max_queued_prompt_tokens);
    return grpc::Status::OK;
  }

  const std::string& address() const { return server_.address(); }
  const std::string& id() const { return script_.worker_id; }
  void Kill() { server_.Kill(); }

  FakeLog log;

 private:
  const PrefillScript script_;
  int64_t queued_tokens_ = 0;  // guarded by log.mu
  FakeServer<FakePrefillWorker> server_;
};

}  // namespace indexcache::testing
