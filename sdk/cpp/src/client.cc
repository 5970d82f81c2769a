#include "indexcache/client.h"

#include <atomic>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "call_status.h"
#include "common/util/read_file.h"
#include "common/util/status_macros.h"
#include "indexcache/v1/generate.grpc.pb.h"
#include "proto_convert.h"

namespace indexcache::client {
namespace {

absl::Status CheckPositive(std::optional<absl::Duration> timeout, const char* what) {
  if (timeout && *timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be positive, got ", absl::FormatDuration(*timeout)));
  }
  return absl::OkStatus();
}

// TLS credentials from `tls`'s PEM text and files.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentials(const TlsOptions& tls) {
  if (!tls.ca_certificates_pem.empty() && !tls.ca_certificates_file.empty()) {
    return absl::InvalidArgumentError("TLS: give the CA certificates as PEM text or as a file, not both");
  }
  if (tls.client_certificate_file.empty() != tls.client_key_file.empty()) {
    return absl::InvalidArgumentError("TLS: a client certificate needs its key, and a key its certificate");
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_certificates_pem;
  if (!tls.ca_certificates_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadWholeFile(tls.ca_certificates_file, "CA certificates"));
  }
  if (!tls.client_certificate_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_cert_chain, ReadWholeFile(tls.client_certificate_file, "client certificate"));
    ASSIGN_OR_RETURN(options.pem_private_key, ReadWholeFile(tls.client_key_file, "client key"));
  }
  return grpc::SslCredentials(options);
}

// A channel to the router: plaintext, or TLS with `tls`.
absl::StatusOr<std::shared_ptr<grpc::Channel>> RouterChannel(const std::string& address,
                                                             const std::optional<TlsOptions>& tls) {
  if (!tls) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials, TlsCredentials(*tls));
  grpc::ChannelArguments args;
  if (!tls->server_name.empty()) args.SetSslTargetNameOverride(tls->server_name);
  return grpc::CreateCustomChannel(address, credentials, args);
}

// A call's deadline and, when the client has one, its API key.
void PrepareCall(grpc::ClientContext& context, std::optional<absl::Duration> timeout, const std::string& api_key) {
  if (timeout) context.set_deadline(absl::ToChronoTime(absl::Now() + *timeout));
  if (!api_key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", api_key));
}

}  // namespace

struct Client::Impl {
  std::string address;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::IndexCache::Stub> stub;
};

struct GenerateStream::State {
  std::shared_ptr<grpc::Channel> channel;  // the call must not outlive its channel
  std::string address;
  std::optional<absl::Duration> timeout;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;  // null if the call never started
  std::string request_id;
  bool saw_final = false;
  bool done = false;
  absl::Status error;  // why the stream failed, once done
  std::atomic<bool> cancelled{false};
};

GenerateStream::GenerateStream(std::unique_ptr<State> state) : state_(std::move(state)) {}
GenerateStream::GenerateStream(GenerateStream&&) noexcept = default;
GenerateStream& GenerateStream::operator=(GenerateStream&&) noexcept = default;

GenerateStream::~GenerateStream() {
  if (state_ == nullptr || state_->done) return;
  // Finish() on a call the server is still streaming would wait for the server to end it.
  state_->context.TryCancel();
  state_->reader->Finish();
}

absl::StatusOr<std::optional<GenerateChunk>> GenerateStream::Next() {
  if (state_ == nullptr) return absl::FailedPreconditionError("Next() on a moved-from GenerateStream");
  State& s = *state_;
  if (s.done) {
    if (!s.error.ok()) return s.error;
    return std::nullopt;
  }
  v1::GenerateResponse response;
  if (s.reader->Read(&response)) {
    GenerateChunk chunk = FromProto(response);
    if (!chunk.request_id.empty()) s.request_id = chunk.request_id;
    if (chunk.final) s.saw_final = true;
    return chunk;
  }
  const grpc::Status status = s.reader->Finish();
  s.done = true;
  if (s.cancelled && status.error_code() == grpc::StatusCode::CANCELLED) {
    s.error = absl::CancelledError(absl::StrCat("Generate on ", s.address, ": cancelled by the client"));
  } else if (!status.ok()) {
    s.error = CallStatus(status, "Generate", s.address, s.timeout);
  } else if (!s.saw_final) {
    s.error = absl::InternalError(
        absl::StrCat("Generate on ", s.address, ": the stream ended without a final message"));
  }
  if (!s.error.ok()) return s.error;
  return std::nullopt;
}

void GenerateStream::Cancel() {
  if (state_ == nullptr) return;
  state_->cancelled = true;
  state_->context.TryCancel();
}

const std::string& GenerateStream::request_id() const {
  static const std::string kEmpty;
  return state_ == nullptr ? kEmpty : state_->request_id;
}

Client::Client(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<Client> Client::Connect(std::string router_address, ClientOptions options) {
  if (router_address.empty()) return absl::InvalidArgumentError("router address is empty");
  RETURN_IF_ERROR(CheckPositive(options.default_timeout, "default_timeout"));
  RETURN_IF_ERROR(CheckPositive(options.connect_timeout, "connect_timeout"));
  auto impl = std::make_shared<Impl>();
  impl->address = std::move(router_address);
  impl->options = options;
  ASSIGN_OR_RETURN(impl->channel, RouterChannel(impl->address, options.tls));
  impl->stub = v1::IndexCache::NewStub(impl->channel);
  if (options.connect_timeout &&
      !impl->channel->WaitForConnected(absl::ToChronoTime(absl::Now() + *options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat("router ", impl->address, " not reachable within ",
                                               absl::FormatDuration(*options.connect_timeout)));
  }
  return Client(std::move(impl));
}

GenerateStream Client::Stream(const GenerateRequest& request) const {
  auto state = std::make_unique<GenerateStream::State>();
  state->channel = impl_->channel;
  state->address = impl_->address;
  state->timeout = request.timeout ? request.timeout : impl_->options.default_timeout;
  if (absl::Status valid = CheckPositive(request.timeout, "timeout"); !valid.ok()) {
    state->done = true;
    state->error = std::move(valid);
    return GenerateStream(std::move(state));
  }
  PrepareCall(state->context, state->timeout, impl_->options.api_key);
  state->reader = impl_->stub->Generate(&state->context, ToProto(request));
  return GenerateStream(std::move(state));
}

absl::StatusOr<GenerateResult> Client::Generate(const GenerateRequest& request) const {
  GenerateStream stream = Stream(request);
  GenerateResult result;
  // Choices are added as the stream names them (the router refuses an n out of range before any).
  const int32_t n = request.sampling.n.value_or(1);
  while (true) {
    ASSIGN_OR_RETURN(std::optional<GenerateChunk> chunk, stream.Next());
    if (!chunk) break;
    if (!chunk->request_id.empty()) result.request_id = chunk->request_id;
    if (chunk->index < 0 || chunk->index >= n) {
      return absl::InternalError(
          absl::StrCat("Generate on ", impl_->address, ": the router sent choice ", chunk->index, " of ", n));
    }
    while (static_cast<int32_t>(result.choices.size()) <= chunk->index) {
      const auto index = static_cast<int32_t>(result.choices.size());
      result.choices.emplace_back().index = index;
    }
    Choice& choice = result.choices[chunk->index];
    choice.output_ids.insert(choice.output_ids.end(), chunk->token_ids.begin(), chunk->token_ids.end());
    choice.text += chunk->text;
    choice.logprobs.insert(choice.logprobs.end(), chunk->logprobs.begin(), chunk->logprobs.end());
    if (chunk->final) choice.final = std::move(*chunk->final);
  }
  if (static_cast<int32_t>(result.choices.size()) != n) {
    return absl::InternalError(absl::StrCat("Generate on ", impl_->address, ": the stream ended with ",
                                            result.choices.size(), " of ", n, " choices"));
  }
  static_cast<Choice&>(result) = result.choices.front();
  return result;
}

absl::StatusOr<bool> Client::Abort(const std::string& request_id) const {
  grpc::ClientContext context;
  PrepareCall(context, impl_->options.default_timeout, impl_->options.api_key);
  v1::AbortRequest request;
  request.set_request_id(request_id);
  v1::AbortResponse response;
  const grpc::Status status = impl_->stub->Abort(&context, request, &response);
  if (!status.ok()) return CallStatus(status, "Abort", impl_->address, impl_->options.default_timeout);
  return response.found();
}

absl::StatusOr<ModelInfo> Client::GetModelInfo() const {
  grpc::ClientContext context;
  PrepareCall(context, impl_->options.default_timeout, impl_->options.api_key);
  v1::ModelInfoResponse response;
  const grpc::Status status = impl_->stub->ModelInfo(&context, v1::ModelInfoRequest(), &response);
  if (!status.ok()) return CallStatus(status, "ModelInfo", impl_->address, impl_->options.default_timeout);
  return FromProto(response);
}

const std::string& Client::router_address() const { return impl_->address; }

}  // namespace indexcache::client
