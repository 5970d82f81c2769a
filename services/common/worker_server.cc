#include "services/common/worker_server.h"

#include "grpcpp/ext/proto_server_reflection_plugin.h"

#include <utility>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/metrics/metrics_server.h"
#include "common/util/logging.h"
#include "prometheus/registry.h"
#include "services/common/router_registration.h"

namespace indexcache {
namespace {

// How long calls other than the worker's main one (GetLoad, Abort, health, stray handoffs) may take
// to end once draining is done, and calls ended after the drain grace to return.
constexpr absl::Duration kShutdownGrace = absl::Seconds(5);

// "0.0.0.0:0" bound to port 41234 → "127.0.0.1:41234": a wildcard host is not an address to call.
std::string AdvertisedAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::" || host == "*") host = "127.0.0.1";
  return absl::StrCat(host, ":", port);
}

}  // namespace

absl::Status ValidateWorkerServerOptions(const WorkerServerOptions& options) {
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the heartbeat interval must be positive");
  }
  return RequireClusterToken(options.cluster_token, options.insecure_internal_plane, "worker");
}

WorkerServer::WorkerServer(WorkerServerOptions options) : options_(std::move(options)) {}

WorkerServer::~WorkerServer() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  served_.lifecycle->StartDraining();
  served_.lifecycle->StopAll(absl::AbortedError(absl::StrCat("the ", role_name_, " worker is shutting down")));
  Stop(absl::ZeroDuration());
}

absl::StatusOr<std::string> WorkerServer::Start(Served served) {
  std::lock_guard<std::mutex> lock(mu_);
  // Whatever fails from here on, the worker's own listeners (already serving) stop. A copy: `served`
  // moves into served_ on the way.
  const std::function<void()> stop_listeners = served.stop_listeners;
  const auto fail = [&stop_listeners](absl::Status status) {
    if (stop_listeners) stop_listeners();
    return status;
  };
  if (started_) {
    return fail(absl::FailedPreconditionError(absl::StrCat("the ", role_name_, " worker is already started")));
  }
  if (served.service == nullptr || served.lifecycle == nullptr ||
      (served.role != v1::PREFILL && served.role != v1::DECODE)) {
    return fail(absl::InvalidArgumentError("a worker server serves a PREFILL or DECODE service"));
  }
  if (!options_.metrics_listen_address.empty() && served.metrics == nullptr) {
    return fail(absl::InvalidArgumentError("a metrics address needs the worker's metrics registry"));
  }
  served_ = std::move(served);
  role_name_ = served_.role == v1::PREFILL ? "prefill" : "decode";
  if (!options_.metrics_listen_address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> metrics = MetricsServer::Start(
        options_.metrics_listen_address, served_.metrics, [service = served_.lifecycle] { service->Load(); });
    if (!metrics.ok()) return fail(metrics.status());
    metrics_server_ = *std::move(metrics);
  }
  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection: grpcurl and other generic clients list and call the services without the protos.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen_address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(served_.max_receive_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a second worker on this port fails to start
  builder.RegisterService(served_.service);
  for (const auto& [name, service] : served_.more_services) builder.RegisterService(service);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) {
    server_.reset();
    metrics_server_.reset();
    return fail(absl::UnavailableError(
        absl::StrCat(role_name_, " worker cannot listen on ", options_.listen_address)));
  }
  started_ = true;
  address_ = options_.advertise_address.empty() ? AdvertisedAddress(options_.listen_address, port)
                                                : options_.advertise_address;
  worker_id_ = options_.worker_id.empty() ? absl::StrCat(role_name_, "@", address_) : options_.worker_id;
  served_.lifecycle->Ready(worker_id_, address_);
  SetServing(true);
  IC_LOG(Info) << role_name_ << " worker " << worker_id_ << " listening on " << address_ << served_.listening_detail;
  if (!options_.router_address.empty()) {
    v1::RegisterRequest self = served_.registration;
    self.set_worker_id(worker_id_);
    self.set_role(served_.role);
    self.set_address(address_);
    registration_ = std::make_unique<RouterRegistration>(
        options_.router_address, options_.cluster_token, std::move(self), options_.heartbeat_interval,
        [service = served_.lifecycle](const v1::CachedBlocksCursor& router_has) {
          v1::WorkerLoad load = service->Load();
          service->ReportCachedBlocks(router_has, &load);
          return load;
        });
    // The router places a session's next turn by the blocks this one cached: it hears of them at
    // once, not a heartbeat later.
    served_.lifecycle->OnCachedBlocksChanged([registration = registration_.get()] { registration->Poke(); });
  }
  return address_;
}

void WorkerServer::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  IC_LOG(Info) << role_name_ << " worker " << worker_id_ << " draining";
  SetServing(false);
  served_.lifecycle->StartDraining();
  if (registration_ != nullptr) registration_->Poke();  // the router learns at once
  if (!served_.lifecycle->WaitIdle(absl::Now() + options_.drain_grace)) {
    IC_LOG(Info) << role_name_ << " worker " << worker_id_ << ": calls still in flight after the "
                 << absl::FormatDuration(options_.drain_grace) << " drain grace are ended";
    // UNAVAILABLE, as from any worker that went away: the router moves a stream it can move.
    served_.lifecycle->StopAll(absl::UnavailableError(
        absl::StrCat(role_name_, " worker ", worker_id_, " is shutting down: the request was still running after the ",
                     absl::FormatDuration(options_.drain_grace), " drain grace")));
    // Ended calls return at once; any that does not is cancelled by the server's shutdown below.
    served_.lifecycle->WaitIdle(absl::Now() + kShutdownGrace);
  }
  Stop(kShutdownGrace);
  IC_LOG(Info) << role_name_ << " worker " << worker_id_ << " drained and stopped";
}

void WorkerServer::Stop(absl::Duration grace) {
  served_.lifecycle->OnCachedBlocksChanged(nullptr);  // before the registration it pokes goes
  registration_.reset();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (served_.stop_listeners) served_.stop_listeners();
  stopped_ = true;
}

void WorkerServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // the overall status ("")
  health->SetServingStatus(served_.service_name, serving);
  for (const auto& [name, service] : served_.more_services) health->SetServingStatus(name, serving);
}

void WorkerServer::Wait() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return;
  }
  server_->Wait();
}

std::string WorkerServer::metrics_address() const {
  return metrics_server_ != nullptr ? metrics_server_->address() : std::string();
}

v1::WorkerLoad WorkerServer::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  return started_ ? served_.lifecycle->Load() : v1::WorkerLoad();
}

}  // namespace indexcache
