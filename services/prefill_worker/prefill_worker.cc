#include "services/prefill_worker/prefill_worker.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/nccl_handoff.h"
#include "common/metrics/metrics_server.h"
#include "common/model/model_config.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/prefill_worker/prefill_service.h"
#include "services/common/router_registration.h"
#include "services/common/worker_metrics.h"

namespace indexcache {
namespace {

// Prompts arrive as repeated int32 (up to 5 bytes a token): room for very long contexts.
constexpr int kMaxMessageBytes = 64 << 20;
// How long calls other than Prefill (GetLoad, Abort, health) may take to end once draining is done.
constexpr absl::Duration kDrainGrace = absl::Seconds(5);
constexpr char kServiceName[] = "indexcache.v1.PrefillWorker";

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

PrefillWorker::PrefillWorker(const PrefillWorkerOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<PrefillWorker>> PrefillWorker::Create(const PrefillWorkerOptions& options) {
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the heartbeat interval must be positive");
  }
  if (options.max_queued_prompt_tokens < 0) {
    return absl::InvalidArgumentError("max_queued_prompt_tokens must be >= 0 (0: no bound)");
  }
  if (options.handoff_connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the handoff connect timeout must be positive");
  }
  std::unique_ptr<PrefillWorker> worker(new PrefillWorker(options));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options.engine));
  const std::vector<IndexerType>& pattern = engine->config().indexer_types;
  const auto full = static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), IndexerType::kFull));
  worker->metrics_ = std::make_unique<WorkerMetrics>(v1::PREFILL, full, static_cast<int32_t>(pattern.size()) - full);
  worker->loop_ = std::make_unique<EngineLoop>(std::move(engine));
  PrefillServiceOptions service;
  service.max_queued_prompt_tokens = options.max_queued_prompt_tokens;
  service.job.connect_timeout = options.handoff_connect_timeout;
  if (options.nccl_gpu >= 0) {
    ASSIGN_OR_RETURN(std::unique_ptr<PeerChannelFactory> channels, MakeNcclChannelFactory(options.nccl_gpu));
    worker->nccl_ = std::make_unique<NcclHandoffClient>(std::move(channels));
    service.job.nccl = worker->nccl_.get();
  }
  worker->service_ = std::make_unique<PrefillService>(*worker->loop_, service, *worker->metrics_);
  return worker;
}

PrefillWorker::~PrefillWorker() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  service_->StartDraining();
  service_->StopAll(absl::AbortedError("the prefill worker is shutting down"));
  Stop(absl::ZeroDuration());
}

absl::StatusOr<std::string> PrefillWorker::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return absl::FailedPreconditionError("the prefill worker is already started");
  if (!options_.metrics_listen_address.empty()) {
    // Every scrape reads the load first, which brings the engine's counters up to date.
    ASSIGN_OR_RETURN(metrics_server_, MetricsServer::Start(options_.metrics_listen_address, metrics_->registry(),
                                                           [service = service_.get()] { service->Load(); }));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen_address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    server_.reset();
    metrics_server_.reset();
    return absl::UnavailableError(absl::StrCat("prefill worker cannot listen on ", options_.listen_address));
  }
  started_ = true;
  address_ = options_.advertise_address.empty() ? AdvertisedAddress(options_.listen_address, port)
                                                : options_.advertise_address;
  worker_id_ = options_.worker_id.empty() ? absl::StrCat("prefill@", address_) : options_.worker_id;
  service_->set_worker_id(worker_id_);
  SetServing(*server_, true);
  IC_LOG(Info) << "prefill worker " << worker_id_ << " listening on " << address_;
  if (!options_.router_address.empty()) {
    const Engine& engine = loop_->engine();
    v1::RegisterRequest self;
    self.set_worker_id(worker_id_);
    self.set_role(v1::PREFILL);
    self.set_address(address_);
    self.set_model_fingerprint(engine.model_fingerprint());
    self.set_index_pattern(FormatIndexPattern(engine.config().indexer_types));
    registration_ = std::make_unique<RouterRegistration>(options_.router_address, std::move(self),
                                                         options_.heartbeat_interval,
                                                         [service = service_.get()] { return service->Load(); });
  }
  return address_;
}

void PrefillWorker::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  IC_LOG(Info) << "prefill worker " << worker_id_ << " draining";
  SetServing(*server_, false);
  service_->StartDraining();
  if (registration_ != nullptr) registration_->Poke();  // the router learns at once
  service_->WaitIdle();
  Stop(kDrainGrace);
  IC_LOG(Info) << "prefill worker " << worker_id_ << " drained and stopped";
}

void PrefillWorker::Stop(absl::Duration grace) {
  registration_.reset();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  stopped_ = true;
}

std::string PrefillWorker::metrics_address() const {
  return metrics_server_ != nullptr ? metrics_server_->address() : std::string();
}

void PrefillWorker::Wait() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return;
  }
  server_->Wait();
}

}  // namespace indexcache
