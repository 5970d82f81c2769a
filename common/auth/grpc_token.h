// The cluster token on the internal plane's gRPC calls: clients send `authorization: Bearer <token>`
// on every call of a channel made by InternalChannel; each internal service's handler begins with
// CheckCallToken and answers UNAUTHENTICATED without it.
//
// Why these mechanisms, with gRPC 1.51 (Debian 12): call credentials cannot be composed with
// InsecureChannelCredentials (CompositeChannelCredentials needs secure channel credentials), so a
// client interceptor adds the header instead — one per channel, so no call site can forget it. On the
// server, InsecureServerCredentials takes no AuthMetadataProcessor (its SetAuthMetadataProcessor
// asserts) and a server interceptor cannot end a call with a status, so the check is the first line of
// each internal handler; InternalServicesRefuseCallsWithoutTheToken (tests/service_common) calls every
// method that internal.proto declares and keeps it so. grpc.health.v1 stays open: Kubernetes' gRPC
// probes send no metadata, and health says nothing but SERVING or not.
#pragma once

#include <memory>
#include <string>

#include "common/auth/cluster_token.h"
#include "grpcpp/channel.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/channel_arguments.h"

namespace indexcache {

// A channel to an internal service at `address` whose calls carry `token` (none: plain calls).
std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address, const ClusterToken& token,
                                               const grpc::ChannelArguments& args = grpc::ChannelArguments());

// OK when the call carries `token` (or `token` is none); else UNAUTHENTICATED, which says what is
// missing but never echoes what was sent.
grpc::Status CheckCallToken(const grpc::ServerContext& context, const ClusterToken& token);

// The public API's counterpart: OK when `api_key` is empty or the call carries it as
// `authorization: Bearer <key>` (compared in constant time); else UNAUTHENTICATED.
grpc::Status CheckApiKey(const grpc::ServerContext& context, const std::string& api_key);

}  // namespace indexcache
