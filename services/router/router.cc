#include "services/router/router.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "common/auth/grpc_token.h"
#include "common/metrics/metrics_server.h"
#include "common/model/model_config.h"
#include "common/model/model_fingerprint.h"
#include "common/safetensors/weight_store.h"
#include "common/util/host_port.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpc/grpc.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "indexcache/v1/generate.grpc.pb.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "services/router/admission_queue.h"
#include "services/router/choice_stream.h"
#include "services/router/generate_call.h"
#include "services/router/parsing_handler.h"
#include "services/router/request_id.h"
#include "services/router/request_table.h"
#include "services/router/request_validator.h"
#include "services/common/status_conversion.h"
#include "services/openai/openai_server.h"

namespace indexcache {
namespace {

// The one architecture the engine runs (LoadModelConfig refuses any other model_type).
constexpr char kArchitecture[] = "GlmMoeDsaForCausalLM";

// "host:port" clients can dial: a wildcard host becomes loopback.
std::string DialableAddress(const std::string& listen_address, int port) {
  std::string host = listen_address.substr(0, listen_address.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return absl::StrFormat("%s:%d", host, port);
}

// The model fingerprint of `model_dir`'s weights, or "" when the directory holds none (the router
// only needs config.json and tokenizer.json; the pool then learns the fingerprint from its workers).
absl::StatusOr<std::string> FingerprintIfWeights(const std::string& model_dir) {
  absl::StatusOr<WeightStore> store = WeightStore::Open(model_dir);
  if (absl::IsNotFound(store.status())) return std::string();
  if (!store.ok()) return store.status();
  return ModelFingerprint(model_dir, *store);
}

absl::Status ValidateOptions(const RouterOptions& o) {
  if (o.model_dir.empty()) return absl::InvalidArgumentError("the router needs the model directory (--model DIR)");
  if (o.max_queued_requests < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("the queue limit must be >= 1, got %d", o.max_queued_requests));
  }
  if (o.heartbeat_timeout <= absl::ZeroDuration() || o.health_check_interval <= absl::ZeroDuration() ||
      o.request_timeout <= absl::ZeroDuration() || o.dns_interval <= absl::ZeroDuration() ||
      o.stall_timeout < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError(
        "the heartbeat timeout, health-check interval, request timeout and DNS interval must be > 0, the "
        "stall timeout at least 100 ms");
  }
  if (o.transport != v1::HANDOFF_TRANSPORT_GRPC && o.transport != v1::HANDOFF_TRANSPORT_TCP &&
      o.transport != v1::HANDOFF_TRANSPORT_NCCL) {
    return absl::InvalidArgumentError(
        absl::StrFormat("handoff transport %s is not available", v1::HandoffTransport_Name(o.transport)));
  }
  return RequireClusterToken(o.cluster_token, o.insecure_internal_plane, "router");
}

// The DNS names to watch, prefill ones first.
absl::StatusOr<std::vector<DnsTarget>> DnsTargets(const RouterOptions& o) {
  std::vector<DnsTarget> targets;
  for (const auto& [role, names] : {std::pair{v1::PREFILL, &o.prefill_dns}, std::pair{v1::DECODE, &o.decode_dns}}) {
    for (const std::string& name : *names) {
      ASSIGN_OR_RETURN(DnsTarget target, ParseDnsTarget(role, name));
      targets.push_back(std::move(target));
    }
  }
  return targets;
}

}  // namespace

// The gRPC services, sharing the router's state.
class Router::Services {
 public:
  Services(const RouterOptions& options, WorkerRegistry* registry, AdmissionQueue& queue,
           std::unique_ptr<RequestValidator> validator, RouterMetrics& metrics)
      : options_(options),
        registry_(registry),
        queue_(queue),
        metrics_(metrics),
        validator_(std::move(validator)),
        table_(options.max_queued_requests),
        stall_monitor_(options.stall_timeout),
        api_(this),
        registration_(this) {
    dispatch_.transport = options.transport;
    dispatch_.stall_monitor = &stall_monitor_;
    dispatch_.migration_limit = options.migration_limit;
    dispatch_.index_pattern = FormatIndexPattern(validator_->config().indexer_types);
    dispatch_.model = &validator_->config();
  }

  grpc::Service* api() { return &api_; }
  grpc::Service* registration() { return &registration_; }
  RequestTable& table() { return table_; }
  void StopAdmitting() { draining_ = true; }

 private:
  // The IndexCache service, its methods registered here rather than by the generated base class so
  // that each parses its own request: a malformed one gets INVALID_ARGUMENT with a message
  // (parsing_handler.h).
  class Api final : public grpc::Service {
   public:
    explicit Api(Services* s) : s_(s) {
      using grpc::internal::RpcMethod;
      using grpc::internal::RpcServiceMethod;
      // gRPC keeps the names' pointers: string literals. The test of the generated stub's calls is
      // RouterTest.MalformedProtobufGetsInvalidArgumentWithAMessage (any other name would not answer).
      AddMethod(new RpcServiceMethod(
          "/indexcache.v1.IndexCache/Generate", RpcMethod::SERVER_STREAMING,
          new ParsingStreamHandler<Api, v1::GenerateRequest, v1::GenerateResponse>("IndexCache.Generate",
                                                                                   &Api::Generate, this)));
      AddMethod(new RpcServiceMethod(
          "/indexcache.v1.IndexCache/Abort", RpcMethod::NORMAL_RPC,
          new ParsingUnaryHandler<Api, v1::AbortRequest, v1::AbortResponse>("IndexCache.Abort", &Api::Abort, this)));
      AddMethod(new RpcServiceMethod(
          "/indexcache.v1.IndexCache/ModelInfo", RpcMethod::NORMAL_RPC,
          new ParsingUnaryHandler<Api, v1::ModelInfoRequest, v1::ModelInfoResponse>("IndexCache.ModelInfo",
                                                                                     &Api::ModelInfo, this)));
    }
    grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                          grpc::ServerWriter<v1::GenerateResponse>* writer) {
      if (grpc::Status auth = CheckApiKey(*context, s_->options_.api_key); !auth.ok()) return auth;
      return s_->Generate(context, *request, writer);
    }
    grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request, v1::AbortResponse* response) {
      if (grpc::Status auth = CheckApiKey(*context, s_->options_.api_key); !auth.ok()) return auth;
      // Only the exact id the router returned finds its request: ids are unguessable (request_id.h).
      response->set_found(s_->table_.Abort(request->request_id()));
      // Escaped and cut: the id is the caller's bytes, which must not forge log lines.
      IC_LOG(Info) << "Abort " << absl::CHexEscape(request->request_id().substr(0, 128))
                   << (response->found() ? "" : ": no such request in flight");
      return grpc::Status::OK;
    }
    grpc::Status ModelInfo(grpc::ServerContext* context, const v1::ModelInfoRequest*,
                           v1::ModelInfoResponse* response) {
      if (grpc::Status auth = CheckApiKey(*context, s_->options_.api_key); !auth.ok()) return auth;
      s_->FillModelInfo(*response);
      return grpc::Status::OK;
    }

   private:
    Services* const s_;
  };

  class Registration final : public v1::Registry::Service {
   public:
    explicit Registration(Services* s) : s_(s) {}
    grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                          v1::RegisterResponse* response) override {
      if (grpc::Status auth = CheckCallToken(*context, s_->options_.cluster_token); !auth.ok()) return auth;
      absl::StatusOr<v1::CachedBlocksCursor> cursor = s_->registry_->Register(*request);
      if (!cursor.ok()) {
        IC_LOG(Warning) << cursor.status().message();
        return ToGrpcStatus(cursor.status());
      }
      response->set_heartbeat_interval_seconds(absl::ToDoubleSeconds(s_->options_.heartbeat_timeout) / 3);
      *response->mutable_cached_blocks() = *std::move(cursor);
      return grpc::Status::OK;
    }
    grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                           v1::HeartbeatResponse* response) override {
      if (grpc::Status auth = CheckCallToken(*context, s_->options_.cluster_token); !auth.ok()) return auth;
      const std::optional<v1::CachedBlocksCursor> cursor = s_->registry_->Heartbeat(request->load());
      response->set_known(cursor.has_value());
      if (cursor.has_value()) *response->mutable_cached_blocks() = *cursor;
      return grpc::Status::OK;
    }

   private:
    Services* const s_;
  };

  // Every Generate call counts once by outcome, refusals at the front door included.
  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest& request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
    const absl::Time arrival = absl::Now();
    bool aborted = false;
    const grpc::Status status = Serve(context, request, writer, arrival, aborted);
    metrics_.CountRequest(status, aborted, absl::Now() - arrival);
    return status;
  }

  grpc::Status Serve(grpc::ServerContext* context, const v1::GenerateRequest& request,
                     grpc::ServerWriter<v1::GenerateResponse>* writer, absl::Time arrival, bool& aborted) {
    if (draining_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the router is draining and admits no new requests");
    }
    absl::StatusOr<std::vector<int32_t>> prompt = validator_->Validate(request);
    if (!prompt.ok()) return ToGrpcStatus(prompt.status());
    absl::StatusOr<std::string> made = NewRequestId(request.request_id());  // the label passed Validate
    if (!made.ok()) return ToGrpcStatus(made.status());
    const std::string& id = *made;
    const int choices = request.sampling().has_n() ? request.sampling().n() : 1;  // Validate bounded it
    absl::StatusOr<std::shared_ptr<RequestHandle>> handle = table_.Admit(id, choices);
    if (!handle.ok()) {
      IC_LOG(Info) << "request " << id << " refused: " << handle.status().message();
      return ToGrpcStatus(handle.status());
    }
    // The id goes out at once: a client needs it to Abort a request that still waits in the queue.
    v1::GenerateResponse admitted;
    admitted.set_request_id(id);
    writer->Write(admitted);
    const absl::Time deadline =
        std::min(absl::FromChrono(context->deadline()), arrival + options_.request_timeout);
    IC_LOG(Info) << "request " << id << " admitted (" << prompt->size() << " prompt tokens, deadline in "
                 << absl::FormatDuration(absl::Trunc(deadline - arrival, absl::Milliseconds(1))) << ")";
    metrics_.CountPromptTokens(static_cast<int64_t>(prompt->size()));
    ChoiceStreams streams(writer, choices);
    std::vector<v1::GenerateRequest> choice_requests;
    for (int choice = 0; choice < choices; ++choice) choice_requests.push_back(ChoiceRequest(request, choice));
    const grpc::Status status = RunChoices(
        choices,
        [&](int choice) {
          GenerateCall call(registry_, queue_, dispatch_, metrics_, *handle, choice, context, streams.choice(choice),
                            choice_requests[choice], *prompt, arrival, deadline);
          return call.Run();
        },
        [&] { (*handle)->Abort(); });
    // A choice's failure aborts its siblings: the request counts as failed then, not as aborted.
    aborted = status.ok() && (*handle)->aborted();
    table_.Finish(*handle);
    if (!status.ok()) {
      IC_LOG(Info) << "request " << id << " failed: " << status.error_message();
    }
    return status;
  }

  void FillModelInfo(v1::ModelInfoResponse& info) const {
    const ModelConfig& config = validator_->config();
    std::string pattern = registry_->PoolIndexPattern();
    if (pattern.empty()) pattern = dispatch_.index_pattern;
    info.set_architecture(kArchitecture);
    info.set_num_layers(config.num_layers);
    info.set_hidden_size(config.hidden_size);
    info.set_vocab_size(config.vocab_size);
    info.set_index_topk(config.index_topk);
    info.set_index_pattern(pattern);
    info.set_length_patterns(registry_->PoolLengthPatterns());
    info.set_num_full_layers(static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), 'F')));
    info.set_max_context(config.max_position_embeddings);
    info.set_has_tokenizer(validator_->has_tokenizer());
    info.set_model_fingerprint(registry_->PoolFingerprint());
    for (const WorkerInfo& worker : registry_->Pool()) {
      if (worker.role == v1::PREFILL) info.set_prefill_workers(info.prefill_workers() + 1);
      if (worker.role == v1::DECODE) info.set_decode_workers(info.decode_workers() + 1);
    }
  }

  const RouterOptions& options_;
  WorkerRegistry* const registry_;
  AdmissionQueue& queue_;
  RouterMetrics& metrics_;
  const std::unique_ptr<RequestValidator> validator_;
  DispatchOptions dispatch_;
  RequestTable table_;
  StallMonitor stall_monitor_;
  std::atomic<bool> draining_{false};
  Api api_;
  Registration registration_;
};

Router::Router(RouterOptions options) : options_(std::move(options)) {}

Router::~Router() {
  bool running = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running = server_ != nullptr && !stopped_;
  }
  if (running) Drain(absl::ZeroDuration());
}

absl::StatusOr<std::string> Router::Start() {
  if (server_ != nullptr) return absl::FailedPreconditionError("the router is already started");
  RETURN_IF_ERROR(ValidateOptions(options_));
  absl::StatusOr<std::unique_ptr<RequestValidator>> validator = RequestValidator::Load(options_.model_dir);
  if (!validator.ok()) return Annotate(validator.status(), "loading the router's model description");
  RegistryOptions registry_options;
  ASSIGN_OR_RETURN(registry_options.model_fingerprint, FingerprintIfWeights(options_.model_dir));
  if (!options_.index_pattern.empty()) {
    ASSIGN_OR_RETURN(const std::vector<IndexerType> pattern,
                     ParseIndexPattern(options_.index_pattern, (*validator)->config().num_layers));
    registry_options.index_pattern = FormatIndexPattern(pattern);
  }
  registry_options.heartbeat_timeout = options_.heartbeat_timeout;
  registry_options.cluster_token = options_.cluster_token;
  registry_options.prefix_overlap_weight = options_.prefix_overlap_weight;
  registry_options.probe_timeout = std::clamp(options_.health_check_interval, absl::Milliseconds(500), absl::Seconds(2));
  // The queue is woken by the registry and places through it: both live as long as the router.
  registry_options.capacity_changed = [this] { admission_->Notify(); };
  registry_ = std::make_unique<WorkerRegistry>(registry_options);
  admission_ = std::make_unique<AdmissionQueue>(*registry_);
  for (const std::string& address : options_.prefill_workers) registry_->AddStatic(v1::PREFILL, address);
  for (const std::string& address : options_.decode_workers) registry_->AddStatic(v1::DECODE, address);
  ASSIGN_OR_RETURN(std::vector<DnsTarget> dns_targets, DnsTargets(options_));
  if (!dns_targets.empty()) {
    discovery_ = std::make_unique<DnsDiscovery>(registry_.get(), std::move(dns_targets));
    discovery_->Refresh();
  }
  registry_->Probe();  // static and discovered workers that are up serve from the first request

  services_ = std::make_unique<Services>(options_, registry_.get(), *admission_, std::move(*validator), metrics_);
  if (!options_.metrics_listen_address.empty()) {
    // Gauges of the queue and the pool are read at each scrape.
    ASSIGN_OR_RETURN(metrics_server_,
                     MetricsServer::Start(options_.metrics_listen_address, metrics_.registry(), [this] {
                       metrics_.SetRequests(services_->table().queued(), services_->table().in_flight());
                       metrics_.SetWorkers(registry_->Workers());
                     }));
  }
  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection: grpcurl and other generic clients list and call the services without the protos.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen_address, PublicServerCredentials(options_.tls), &port);
  builder.SetMaxReceiveMessageSize(options_.max_request_bytes);
  // gRPC sets SO_REUSEPORT by default: a second router (or an orphan of a killed `cluster up`) would
  // bind the same port and take half the clients. One port, one router.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(services_->api());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    server_.reset();
    metrics_server_.reset();
    return absl::UnavailableError(absl::StrFormat("the router cannot listen on %s", options_.listen_address));
  }
  // The Registry on a listener of its own: the public port is the clients', who have no business
  // registering workers; the internal port is reachable only inside the cluster (the NetworkPolicy)
  // and every call on it proves the token.
  grpc::ServerBuilder internal_builder;
  int internal_port = 0;
  internal_builder.AddListeningPort(options_.internal_listen_address, grpc::InsecureServerCredentials(),
                                    &internal_port);
  internal_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  internal_builder.RegisterService(services_->registration());
  internal_server_ = internal_builder.BuildAndStart();
  if (internal_server_ == nullptr || internal_port == 0) {
    internal_server_.reset();
    server_->Shutdown();
    server_.reset();
    metrics_server_.reset();
    return absl::UnavailableError(
        absl::StrFormat("the router cannot listen on %s (internal)", options_.internal_listen_address));
  }
  internal_address_ = DialableAddress(options_.internal_listen_address, internal_port);
  // Health per service name as well as the whole server's (""); Drain's SetServingStatus(false) turns
  // every name NOT_SERVING.
  server_->GetHealthCheckService()->SetServingStatus(true);
  server_->GetHealthCheckService()->SetServingStatus(v1::IndexCache::service_full_name(), true);
  internal_server_->GetHealthCheckService()->SetServingStatus(true);
  internal_server_->GetHealthCheckService()->SetServingStatus(v1::Registry::service_full_name(), true);
  if (!options_.http_listen_address.empty()) {
    // HTTP requests become calls on this server's own services, so they take the gRPC clients' path.
    openai::OpenAiOptions api_options{options_.model_dir, options_.api_key};
    absl::StatusOr<std::unique_ptr<openai::OpenAiApi>> api =
        openai::OpenAiApi::Create(std::move(api_options), server_->InProcessChannel(grpc::ChannelArguments()));
    absl::StatusOr<std::unique_ptr<openai::OpenAiServer>> http =
        api.ok() ? openai::OpenAiServer::Start(options_.http_listen_address, std::move(*api), options_.tls)
                 : api.status();
    if (!http.ok()) {
      internal_server_->Shutdown();
      internal_server_.reset();
      server_->Shutdown();
      server_.reset();
      metrics_server_.reset();
      return http.status();
    }
    http_server_ = std::move(*http);
  }
  prober_ = std::thread(&Router::ProbeLoop, this);
  if (discovery_ != nullptr) discovery_->Start(options_.dns_interval);
  WarnOfPlaintextOffLoopback();
  const std::string address = DialableAddress(options_.listen_address, port);
  IC_LOG(Info) << "router listening on " << address << (options_.tls ? " (TLS)" : " (plaintext)") << ", internal "
               << internal_address_ << " ("
               << options_.prefill_workers.size() << " static prefill and " << options_.decode_workers.size()
               << " static decode workers, "
               << options_.prefill_dns.size() + options_.decode_dns.size() << " DNS names, "
               << v1::HandoffTransport_Name(options_.transport) << " handoff)";
  return address;
}

void Router::WarnOfPlaintextOffLoopback() const {
  if (options_.tls.has_value()) return;
  for (const std::string* listen : {&options_.listen_address, &options_.http_listen_address}) {
    if (listen->empty() || IsLoopbackListenAddress(*listen)) continue;
    IC_LOG(Warning) << "the public API on " << *listen << " is PLAINTEXT beyond loopback: "
                    << (options_.api_key.empty() ? "requests" : "the API key and requests")
                    << " travel in clear (--tls-cert-file and --tls-key-file serve TLS)";
  }
}

void Router::ProbeLoop() {
  const auto interval = absl::ToChronoNanoseconds(options_.health_check_interval);
  std::unique_lock<std::mutex> lock(mu_);
  while (!changed_.wait_for(lock, interval, [this] { return stopping_; })) {
    lock.unlock();
    registry_->Probe();
    lock.lock();
  }
}

void Router::Drain(absl::Duration grace) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (draining_) {  // another thread drains: wait for it
      changed_.wait(lock, [this] { return stopped_; });
      return;
    }
    draining_ = true;
    if (server_ == nullptr) {
      stopped_ = true;
      changed_.notify_all();
      return;
    }
  }
  services_->StopAdmitting();
  server_->GetHealthCheckService()->SetServingStatus(false);
  internal_server_->GetHealthCheckService()->SetServingStatus(false);
  IC_LOG(Info) << "router draining: " << services_->table().in_flight() << " requests in flight";
  const bool emptied = services_->table().WaitUntilEmpty(absl::Now() + grace);
  if (!emptied) {
    IC_LOG(Info) << "router drain grace over: cancelling " << services_->table().in_flight() << " requests";
  }
  // HTTP connections first: they are clients of server_ (idle keep-alive ones would otherwise stay).
  http_server_.reset();
  // Finished requests' handlers may still be returning their status: give them a moment, where
  // cancelling them would turn a complete stream into CANCELLED.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + (emptied ? absl::Seconds(5) : absl::ZeroDuration())));
  internal_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  prober_.join();
  if (discovery_ != nullptr) discovery_->Stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  changed_.notify_all();
  IC_LOG(Info) << "router stopped";
}

void Router::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [this] { return stopped_; });
}

std::vector<WorkerInfo> Router::Pool() const { return registry_ ? registry_->Pool() : std::vector<WorkerInfo>(); }

std::vector<WorkerInfo> Router::Workers() const {
  return registry_ ? registry_->Workers() : std::vector<WorkerInfo>();
}

void Router::ProbeWorkers() {
  if (registry_) registry_->Probe();
}

int Router::queued_requests() const { return services_ ? services_->table().queued() : 0; }

int Router::in_flight_requests() const { return services_ ? services_->table().in_flight() : 0; }

std::string Router::metrics_address() const { return metrics_server_ ? metrics_server_->address() : std::string(); }

std::string Router::http_address() const { return http_server_ ? http_server_->address() : std::string(); }

}  // namespace indexcache
