#include "common/auth/grpc_token.h"

#include <optional>
#include <utility>
#include <vector>

#include "common/auth/secrets.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"

namespace indexcache {
namespace {

namespace gx = grpc::experimental;

constexpr char kHeader[] = "authorization";

// Adds the header to each call's initial metadata.
class TokenInterceptor final : public gx::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* value) : value_(value) {}
  void Intercept(gx::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(gx::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kHeader, *value_);
    }
    methods->Proceed();
  }

 private:
  const std::string* const value_;  // owned by the factory, which the channel keeps
};

class TokenInterceptorFactory final : public gx::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const ClusterToken& token) : value_(BearerValue(token.secret())) {}
  gx::Interceptor* CreateClientInterceptor(gx::ClientRpcInfo*) override { return new TokenInterceptor(&value_); }

 private:
  const std::string value_;
};

}  // namespace

std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address, const ClusterToken& token,
                                               const grpc::ChannelArguments& args) {
  if (!token.enabled()) return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  std::vector<std::unique_ptr<gx::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(token));
  return gx::CreateCustomChannelWithInterceptors(address, grpc::InsecureChannelCredentials(), args,
                                                 std::move(interceptors));
}

namespace {

// The secret a call presents as `authorization: Bearer <secret>`; nullopt without one.
std::optional<absl::string_view> PresentedBearer(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kHeader);
  if (it == metadata.end()) return std::nullopt;
  return BearerSecret(absl::string_view(it->second.data(), it->second.size()));
}

}  // namespace

grpc::Status CheckCallToken(const grpc::ServerContext& context, const ClusterToken& token) {
  if (!token.enabled()) return grpc::Status::OK;
  const std::optional<absl::string_view> presented = PresentedBearer(context);
  if (!presented.has_value()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "an internal call needs the cluster token (authorization: Bearer <token>)");
  }
  if (!token.Matches(*presented)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the call's cluster token is wrong");
  }
  return grpc::Status::OK;
}

grpc::Status CheckApiKey(const grpc::ServerContext& context, const std::string& api_key) {
  if (api_key.empty()) return grpc::Status::OK;
  const std::optional<absl::string_view> presented = PresentedBearer(context);
  if (!presented.has_value() || !ConstantTimeEquals(*presented, api_key)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "a valid API key is required: authorization: Bearer <key>");
  }
  return grpc::Status::OK;
}

}  // namespace indexcache
