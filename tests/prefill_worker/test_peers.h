// In-test stand-ins for the prefill worker's peers: a decode worker's KvHandoff endpoint that records
// every chunk (and can refuse or stall) and a HandoffSink recording what the TCP data plane delivers.
// The router's stand-in is tests/service_common/worker_peers.h.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/handoff/handoff_transport.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "tests/service_common/worker_peers.h"

namespace indexcache::testing {

namespace v1 = ::indexcache::v1;

class FakeDecode final : public v1::KvHandoff::Service {
 public:
  enum class Refuse { kNever, kAtHeader, kAtTrailer };

  struct Stream {
    std::vector<v1::HandoffChunk> chunks;
    bool closed_by_sender = false;  // Read ended after the sender's WritesDone (not a cancel)
  };

  // Refusals answer accepted=false with `error`.
  void RefuseWith(Refuse when, const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    refuse_ = when;
    error_ = error;
  }
  // While holding, Push stops reading after the header until Release (or the sender cancels).
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = true;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      holding_ = false;
    }
    changed_.notify_all();
  }
  // Waits until `n` headers arrived; false after 30 s.
  bool WaitForHeaders(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(30), [&] { return headers_ >= n; });
  }
  // Waits until `n` streams ended (completed, refused or broken); false after 30 s.
  bool WaitForStreams(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(30), [&] { return streams_.size() >= n; });
  }
  std::vector<Stream> streams() {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_;
  }

  grpc::Status Push(grpc::ServerContext* context, grpc::ServerReader<v1::HandoffChunk>* reader,
                    v1::HandoffAck* ack) override {
    Stream stream;
    v1::HandoffChunk chunk;
    bool refused = false;
    while (!refused && reader->Read(&chunk)) {
      stream.chunks.push_back(chunk);
      std::unique_lock<std::mutex> lock(mu_);
      if (chunk.has_header()) {
        ++headers_;
        changed_.notify_all();
        while (holding_ && !context->IsCancelled()) changed_.wait_for(lock, std::chrono::milliseconds(10));
        refused = refuse_ == Refuse::kAtHeader;
      }
      if (chunk.has_trailer()) refused = refuse_ == Refuse::kAtTrailer;
    }
    stream.closed_by_sender = !refused && !context->IsCancelled();
    std::lock_guard<std::mutex> lock(mu_);
    ack->set_accepted(!refused);
    if (refused) ack->set_error(error_);
    streams_.push_back(std::move(stream));
    changed_.notify_all();
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  Refuse refuse_ = Refuse::kNever;  // guarded by mu_
  std::string error_;               // guarded by mu_
  bool holding_ = false;            // guarded by mu_
  int headers_ = 0;                 // guarded by mu_
  std::vector<Stream> streams_;     // guarded by mu_
};

// A decode worker's side of the TCP data plane: accepts every handoff and records its chunks.
class RecordingSink final : public HandoffSink {
 public:
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows /*rows: never landed*/) override {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.push_back(chunk);
    return absl::OkStatus();
  }
  v1::HandoffAck OnComplete(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++completed_;
    return MakeAck(absl::OkStatus());
  }
  void OnBroken(const std::string&, const absl::Status&) override {}

  std::vector<v1::HandoffChunk> chunks() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }
  int completed() {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_;
  }

 private:
  std::mutex mu_;
  std::vector<v1::HandoffChunk> chunks_;  // guarded by mu_
  int completed_ = 0;                     // guarded by mu_
};

}  // namespace indexcache::testing
