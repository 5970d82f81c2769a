#include "services/decode_worker/decode_worker.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/grpc_handoff.h"
#include "common/handoff/nccl_handoff.h"
#include "common/handoff/tcp_handoff.h"
#include "common/metrics/metrics_server.h"
#include "common/model/model_config.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/decode_worker/decode_service.h"
#include "services/decode_worker/handoff_importer.h"
#include "services/decode_worker/metered_handoff_sink.h"
#include "services/common/router_registration.h"

namespace indexcache {
namespace {

// A handoff chunk at its largest, plus room for the message's other fields.
constexpr int kMaxMessageBytes = static_cast<int>(kMaxHandoffChunkBytes) + (1 << 20);
// How long calls other than Decode (GetLoad, Abort, health, stray handoffs) may take to end once
// draining is done.
constexpr absl::Duration kDrainGrace = absl::Seconds(5);
constexpr char kServiceName[] = "indexcache.v1.DecodeWorker";

// "0.0.0.0:0" bound to port 41234 → "127.0.0.1:41234": a wildcard host is not an address to call.
std::string AdvertisedAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::" || host == "*") host = "127.0.0.1";
  return absl::StrCat(host, ":", port);
}

void SetServing(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // the overall status ("")
  health->SetServingStatus(kServiceName, serving);
}

}  // namespace

DecodeWorker::DecodeWorker(const DecodeWorkerOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<DecodeWorker>> DecodeWorker::Create(const DecodeWorkerOptions& options) {
  if (options.heartbeat_interval <= absl::ZeroDuration() || options.handoff_timeout <= absl::ZeroDuration() ||
      options.tcp_io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the heartbeat interval, handoff timeout and TCP I/O timeout must be positive");
  }
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(options));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options.engine));
  const std::vector<IndexerType>& pattern = engine->config().indexer_types;
  const auto full = static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), IndexerType::kFull));
  worker->metrics_ = std::make_unique<WorkerMetrics>(v1::DECODE, full, static_cast<int32_t>(pattern.size()) - full);
  worker->loop_ = std::make_unique<EngineLoop>(std::move(engine));
  worker->importer_ = std::make_unique<HandoffImporter>(*worker->loop_);
  worker->grpc_sink_ =
      std::make_unique<MeteredHandoffSink>(*worker->importer_, *worker->metrics_, v1::HANDOFF_TRANSPORT_GRPC);
  worker->tcp_sink_ =
      std::make_unique<MeteredHandoffSink>(*worker->importer_, *worker->metrics_, v1::HANDOFF_TRANSPORT_TCP);
  worker->handoff_service_ = std::make_unique<KvHandoffService>(worker->grpc_sink_.get());
  return worker;
}

DecodeWorker::~DecodeWorker() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  service_->StartDraining();
  service_->StopAll(absl::AbortedError("the decode worker is shutting down"));
  Stop(absl::ZeroDuration());
}

absl::StatusOr<std::string> DecodeWorker::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return absl::FailedPreconditionError("the decode worker is already started");
  if (!options_.tcp_listen_address.empty()) {
    ASSIGN_OR_RETURN(HostPort tcp, SplitHostPort(options_.tcp_listen_address));
    ASSIGN_OR_RETURN(tcp_server_, TcpHandoffServer::Start(tcp.host, tcp.port, tcp_sink_.get(),
                                                          {.io_timeout = options_.tcp_io_timeout}));
    tcp_address_ = tcp_server_->address();
  }
  if (options_.nccl_gpu >= 0) {
    ASSIGN_OR_RETURN(HostPort control, SplitHostPort(options_.nccl_listen_address));
    ASSIGN_OR_RETURN(std::unique_ptr<PeerChannelFactory> channels, MakeNcclChannelFactory(options_.nccl_gpu));
    absl::StatusOr<std::unique_ptr<NcclHandoffServer>> nccl = NcclHandoffServer::Start(
        control.host, control.port, importer_.get(), std::move(channels), {.io_timeout = options_.tcp_io_timeout});
    if (!nccl.ok()) {
      if (tcp_server_ != nullptr) tcp_server_->Shutdown();
      return nccl.status();
    }
    nccl_server_ = *std::move(nccl);
    nccl_address_ = nccl_server_->address();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen_address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  DecodeServiceOptions service_options;
  service_options.tcp_handoff_address = tcp_address_;
  service_options.nccl_handoff_address = nccl_address_;
  service_options.handoff_timeout = options_.handoff_timeout;
  service_ = std::make_unique<DecodeService>(*loop_, *importer_, service_options, *metrics_);
  if (!options_.metrics_listen_address.empty()) {
    // Every scrape reads the load first, which brings the engine's counters up to date.
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics = MetricsServer::Start(
        options_.metrics_listen_address, metrics_->registry(), [service = service_.get()] { service->Load(); });
    if (!metrics.ok()) {
      if (tcp_server_ != nullptr) tcp_server_->Shutdown();
      return metrics.status();
    }
    metrics_server_ = *std::move(metrics);
  }
  builder.RegisterService(service_.get());
  builder.RegisterService(handoff_service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    server_.reset();
    metrics_server_.reset();
    if (tcp_server_ != nullptr) tcp_server_->Shutdown();
    if (nccl_server_ != nullptr) nccl_server_->Shutdown();
    return absl::UnavailableError(absl::StrCat("decode worker cannot listen on ", options_.listen_address));
  }
  started_ = true;
  address_ = options_.advertise_address.empty() ? AdvertisedAddress(options_.listen_address, port)
                                                : options_.advertise_address;
  worker_id_ = options_.worker_id.empty() ? absl::StrCat("decode@", address_) : options_.worker_id;
  // Decode calls answer UNAVAILABLE until the service knows the address it hands out for gRPC handoffs.
  service_->Ready(worker_id_, address_);
  SetServing(*server_, true);
  IC_LOG(Info) << "decode worker " << worker_id_ << " listening on " << address_
               << (tcp_address_.empty() ? "" : absl::StrCat(" (TCP handoff data plane on ", tcp_address_, ")"))
               << (nccl_address_.empty() ? ""
                                         : absl::StrCat(" (NCCL handoff on GPU ", options_.nccl_gpu, ", control on ",
                                                        nccl_address_, ")"));
  if (!options_.router_address.empty()) {
    const Engine& engine = loop_->engine();
    v1::RegisterRequest self;
    self.set_worker_id(worker_id_);
    self.set_role(v1::DECODE);
    self.set_address(address_);
    self.set_handoff_tcp_address(tcp_address_);
    self.set_model_fingerprint(engine.model_fingerprint());
    self.set_index_pattern(FormatIndexPattern(engine.config().indexer_types));
    registration_ = std::make_unique<RouterRegistration>(options_.router_address, std::move(self),
                                                         options_.heartbeat_interval,
                                                         [service = service_.get()] { return service->Load(); });
  }
  return address_;
}

void DecodeWorker::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  IC_LOG(Info) << "decode worker " << worker_id_ << " draining";
  SetServing(*server_, false);
  service_->StartDraining();
  if (registration_ != nullptr) registration_->Poke();  // the router learns at once
  service_->WaitIdle();
  Stop(kDrainGrace);
  IC_LOG(Info) << "decode worker " << worker_id_ << " drained and stopped";
}

void DecodeWorker::Stop(absl::Duration grace) {
  registration_.reset();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (tcp_server_ != nullptr) tcp_server_->Shutdown();
  if (nccl_server_ != nullptr) nccl_server_->Shutdown();
  stopped_ = true;
}

std::string DecodeWorker::metrics_address() const {
  return metrics_server_ != nullptr ? metrics_server_->address() : std::string();
}

void DecodeWorker::Wait() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return;
  }
  server_->Wait();
}

v1::WorkerLoad DecodeWorker::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  return started_ ? service_->Load() : v1::WorkerLoad();
}

}  // namespace indexcache
