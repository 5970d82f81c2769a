// Synchronous methods whose request the service parses itself, so that a malformed message is
// answered INVALID_ARGUMENT with a message. gRPC's generated handlers deserialize before the service
// sees the call and answer a parse failure with INTERNAL and an empty message — a server fault, as far
// as the client can tell, for what is the client's (issue 13). Everything else is the generated
// handler's: this one only replaces its Deserialize.
//
//   AddMethod(new grpc::internal::RpcServiceMethod(
//       "/indexcache.v1.IndexCache/Generate", grpc::internal::RpcMethod::SERVER_STREAMING,
//       new ParsingStreamHandler<Api, v1::GenerateRequest, v1::GenerateResponse>("IndexCache.Generate",
//                                                                                 &Api::Generate, this)));
//   ... RpcMethod::NORMAL_RPC, new ParsingUnaryHandler<Api, v1::AbortRequest, v1::AbortResponse>(...)
#pragma once

#include <functional>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "grpc/byte_buffer_reader.h"
#include "grpc/grpc.h"
#include "grpc/slice.h"
#include "grpcpp/support/method_handler.h"

namespace indexcache {

// `Generated` is gRPC's handler for the method (unary or server-streaming), which runs it.
template <class Request, class Generated>
class ParsingHandler final : public grpc::internal::MethodHandler {
 public:
  // `name` ("IndexCache.Generate") names the method in the malformed request's status.
  template <class Method, class Service>
  ParsingHandler(std::string name, Method method, Service* service)
      : name_(std::move(name)), generated_(std::mem_fn(method), service) {}

  // Runs the method once the request parsed; otherwise sends the parse status (param.status).
  void RunHandler(const HandlerParameter& param) override { generated_.RunHandler(param); }

  // Parses into the call's arena, as the generated handler does (its RunHandler destroys the request).
  void* Deserialize(grpc_call* call, grpc_byte_buffer* req, grpc::Status* status, void** handler_data) override {
    if (req == nullptr) {  // the client half-closed without a message
      *status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                             absl::StrFormat("malformed %s call: it sent no request message", name_));
      return nullptr;
    }
    auto* request = new (grpc::g_core_codegen_interface->grpc_call_arena_alloc(call, sizeof(Request))) Request();
    // One contiguous copy of the bytes (at most the router's receive limit), read through gRPC's C API:
    // the C++ ByteBuffer does not let a handler other than gRPC's own adopt the call's buffer.
    grpc_byte_buffer_reader reader;
    size_t bytes = 0;
    bool parsed = false;
    if (grpc_byte_buffer_reader_init(&reader, req)) {
      grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
      bytes = GRPC_SLICE_LENGTH(all);
      parsed = request->ParseFromArray(GRPC_SLICE_START_PTR(all), static_cast<int>(bytes));
      grpc_slice_unref(all);
      grpc_byte_buffer_reader_destroy(&reader);
    }  // `req` stays the call's, as with the generated handler
    if (parsed) return request;
    request->~Request();
    // protobuf says no more than that the parse failed.
    *status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                           absl::StrFormat("malformed %s request: its %d bytes do not parse as %s (broken wire "
                                           "format, or a string field that is not UTF-8)",
                                           name_, bytes, Request::descriptor()->full_name()));
    return nullptr;
  }

 private:
  const std::string name_;
  Generated generated_;
};

template <class Service, class Request, class Response>
using ParsingStreamHandler =
    ParsingHandler<Request, grpc::internal::ServerStreamingHandler<Service, Request, Response>>;
template <class Service, class Request, class Response>
using ParsingUnaryHandler = ParsingHandler<Request, grpc::internal::RpcMethodHandler<Service, Request, Response>>;

}  // namespace indexcache
