// In-test stand-ins for what a worker talks to besides its clients: a router's Registry that records
// registrations and heartbeats, and a grpc.health.v1 client; plus a loopback server for either side.
#pragma once

#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/auth/grpc_token.h"
#include "google/protobuf/descriptor.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "tests/cluster_token_for_tests.h"

namespace indexcache::testing {

namespace v1 = ::indexcache::v1;

// Builds and starts a server for `service` on a free loopback port.
inline std::unique_ptr<grpc::Server> ServeOnLoopback(grpc::Service* service, std::string* address) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  *address = absl::StrCat("127.0.0.1:", port);
  return server;
}

// grpc.health.v1.Health/Check through a generic stub (the health proto is not compiled here) of
// `service` ("" = the whole server): HealthCheckResponse is field 1, a varint: 1 SERVING, 2 NOT_SERVING;
// -1 when the call fails.
inline int HealthStatus(const std::string& address, const std::string& service = "") {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  // HealthCheckRequest{service}: field 1, length-delimited (names here are shorter than 128 bytes).
  std::string bytes;
  if (!service.empty()) bytes = std::string{'\x0a', static_cast<char>(service.size())} + service;
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(std::move(s)); });
  if (!done.get_future().get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string reply;
  for (const grpc::Slice& s : slices) reply.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return reply.size() == 2 && reply[0] == 0x08 ? reply[1] : -1;
}

// Calls every method internal.proto declares for `service` ("indexcache.v1.DecodeWorker") at
// `address`, with one empty request and `token` (none, or a wrong one), and returns each method's
// status by name: a method added without its CheckCallToken shows up here as not UNAUTHENTICATED.
// (A single message and a half-close is a valid call of a streaming method too, on the wire.)
inline std::vector<std::pair<std::string, grpc::Status>> CallEveryMethod(const std::string& address,
                                                                         const std::string& service,
                                                                         const ClusterToken& token) {
  std::vector<std::pair<std::string, grpc::Status>> statuses;
  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  if (descriptor == nullptr) return statuses;
  grpc::GenericStub stub(InternalChannel(address, token));
  for (int i = 0; i < descriptor->method_count(); ++i) {
    const std::string method = absl::StrCat("/", service, "/", descriptor->method(i)->name());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) { done.set_value(std::move(s)); });
    statuses.emplace_back(descriptor->method(i)->name(), done.get_future().get());
  }
  return statuses;
}

// A router's Registry that records every registration and heartbeat.
class FakeRouter final : public v1::Registry::Service {
 public:
  // The next heartbeat is answered known=false (the router "forgot" the worker).
  void Forget() {
    std::lock_guard<std::mutex> lock(mu_);
    forget_ = true;
  }
  // Waits until at least `registrations` Register and `heartbeats` Heartbeat calls arrived.
  bool WaitFor(size_t registrations, size_t heartbeats) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, std::chrono::seconds(30), [&] {
      return registrations_.size() >= registrations && heartbeats_.size() >= heartbeats;
    });
  }
  std::vector<v1::RegisterRequest> registrations() {
    std::lock_guard<std::mutex> lock(mu_);
    return registrations_;
  }
  std::vector<v1::WorkerLoad> heartbeats() {
    std::lock_guard<std::mutex> lock(mu_);
    return heartbeats_;
  }

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request, v1::RegisterResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    registrations_.push_back(*request);
    changed_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    heartbeats_.push_back(request->load());
    response->set_known(!forget_);
    forget_ = false;
    changed_.notify_all();
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  bool forget_ = false;                         // guarded by mu_
  std::vector<v1::RegisterRequest> registrations_;  // guarded by mu_
  std::vector<v1::WorkerLoad> heartbeats_;          // guarded by mu_
};

}  // namespace indexcache::testing
