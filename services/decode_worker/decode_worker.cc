#include "services/decode_worker/decode_worker.h"

#include <arpa/inet.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/grpc/grpc_handoff.h"
#include "common/handoff/nccl/nccl_handoff.h"
#include "common/handoff/tcp/tcp_handoff.h"
#include "common/model/model_config.h"
#include "common/util/host_port.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "services/decode_worker/decode_service.h"
#include "services/decode_worker/decode_session.h"
#include "services/decode_worker/handoff_importer.h"
#include "services/decode_worker/metered_handoff_sink.h"

namespace indexcache {
namespace {

// A handoff chunk at its largest, plus room for the message's other fields.
constexpr int kMaxMessageBytes = static_cast<int>(kMaxHandoffChunkBytes) + (1 << 20);

// --tcp-advertise must be what a prefill worker can dial as it is: an IP (the TCP sender resolves no
// names) and a real port.
absl::Status CheckTcpAdvertise(const std::string& address) {
  absl::StatusOr<HostPort> split = SplitHostPort(address);
  in6_addr ip;
  if (!split.ok() || split->port == 0 ||
      (inet_pton(AF_INET, split->host.c_str(), &ip) != 1 && inet_pton(AF_INET6, split->host.c_str(), &ip) != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tcp-advertise '", address, "' is not IP:PORT with a nonzero port (prefill workers dial it as given)"));
  }
  return absl::OkStatus();
}

bool IsWildcard(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

}  // namespace

DecodeWorker::DecodeWorker(const DecodeWorkerOptions& options) : options_(options), server_(options.server) {}

absl::StatusOr<std::unique_ptr<DecodeWorker>> DecodeWorker::Create(const DecodeWorkerOptions& options) {
  RETURN_IF_ERROR(ValidateWorkerServerOptions(options.server));
  if (options.handoff_timeout <= absl::ZeroDuration() || options.tcp_io_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the handoff timeout and TCP I/O timeout must be positive");
  }
  if (!options.tcp_advertise_address.empty()) {
    if (options.tcp_listen_address.empty()) {
      return absl::InvalidArgumentError("--tcp-advertise needs the TCP data plane, which --tcp-listen turned off");
    }
    RETURN_IF_ERROR(CheckTcpAdvertise(options.tcp_advertise_address));
  }
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(options));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options.engine));
  const std::vector<IndexerType>& pattern = engine->patterns().base();
  const auto full = static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), IndexerType::kFull));
  worker->metrics_ = std::make_unique<WorkerMetrics>(v1::DECODE, full, static_cast<int32_t>(pattern.size()) - full,
                                                     engine->patterns().Named());
  ImportOptions import = options.import;
  worker->nccl_rows_ = options.nccl_rows.value_or(NcclRowsMemory(engine->cuda_device(), options.nccl_gpu));
  if (options.nccl_gpu >= 0 && worker->nccl_rows_ == RowsMemory::kDevice) {
    // NCCL receives straight onto this GPU: its rows land in device memory, as much as on the host.
    import.device_receive_area_bytes = import.receive_area_bytes;
  }
  worker->loop_ = std::make_unique<EngineLoop>(std::move(engine));
  ASSIGN_OR_RETURN(worker->importer_, HandoffImporter::Create(*worker->loop_, import));
  // A request still waits for its handoff while its session is admitted and not decoding or ended.
  const MeteredHandoffSink::Awaited awaited = [importer = worker->importer_.get()](const std::string& id) {
    const std::shared_ptr<DecodeSession> session = importer->Find(id);
    if (session == nullptr) return false;
    std::lock_guard<std::mutex> lock(session->import_mu);
    return session->import.phase != DecodeSession::Phase::kDecoding &&
           session->import.phase != DecodeSession::Phase::kEnded;
  };
  worker->grpc_sink_ = std::make_unique<MeteredHandoffSink>(*worker->importer_, *worker->metrics_,
                                                            v1::HANDOFF_TRANSPORT_GRPC, awaited);
  worker->tcp_sink_ = std::make_unique<MeteredHandoffSink>(*worker->importer_, *worker->metrics_,
                                                           v1::HANDOFF_TRANSPORT_TCP, awaited);
  worker->handoff_service_ = std::make_unique<KvHandoffService>(worker->grpc_sink_.get(), options.server.cluster_token);
  return worker;
}

// The server member stops the data planes, and aborts what is in flight, if Drain did not.
DecodeWorker::~DecodeWorker() = default;

absl::Status DecodeWorker::StartDataPlanes() {
  const absl::Status started = [&]() -> absl::Status {
    if (!options_.tcp_listen_address.empty()) {
      ASSIGN_OR_RETURN(HostPort tcp, SplitHostPort(options_.tcp_listen_address));
      ASSIGN_OR_RETURN(tcp_server_, TcpHandoffServer::Start(tcp.host, tcp.port, tcp_sink_.get(),
                                                            {.io_timeout = options_.tcp_io_timeout,
                                                             .token = options_.server.cluster_token}));
      tcp_address_ = options_.tcp_advertise_address.empty() ? tcp_server_->address() : options_.tcp_advertise_address;
      if (options_.tcp_advertise_address.empty() && IsWildcard(tcp.host)) {
        IC_LOG(Warning) << "the TCP handoff data plane hands out its bound address " << tcp_address_
                        << ", which prefill workers on other hosts cannot dial: pass --tcp-advertise IP:PORT";
      }
    }
    if (options_.nccl_gpu >= 0) {
      ASSIGN_OR_RETURN(HostPort control, SplitHostPort(options_.nccl_listen_address));
      ASSIGN_OR_RETURN(std::unique_ptr<PeerChannelFactory> channels, options_.nccl_channels(options_.nccl_gpu));
      ASSIGN_OR_RETURN(nccl_server_, NcclHandoffServer::Start(control.host, control.port, importer_.get(),
                                                              std::move(channels),
                                                              {.io_timeout = options_.tcp_io_timeout,
                                                               .token = options_.server.cluster_token,
                                                               .rows = nccl_rows_}));
      nccl_address_ = nccl_server_->address();
    }
    return absl::OkStatus();
  }();
  if (!started.ok()) StopDataPlanes();  // one may already be listening
  return started;
}

void DecodeWorker::StopDataPlanes() {
  if (tcp_server_ != nullptr) tcp_server_->Shutdown();
  if (nccl_server_ != nullptr) nccl_server_->Shutdown();
}

absl::StatusOr<std::string> DecodeWorker::Start() {
  if (service_ != nullptr) return absl::FailedPreconditionError("the decode worker is already started");
  RETURN_IF_ERROR(StartDataPlanes());
  DecodeServiceOptions service_options;
  service_options.tcp_handoff_address = tcp_address_;
  service_options.nccl_handoff_address = nccl_address_;
  service_options.handoff_timeout = options_.handoff_timeout;
  service_options.cluster_token = options_.server.cluster_token;
  // Decode calls answer UNAVAILABLE until the server makes it Ready with the address it hands out for
  // gRPC handoffs.
  service_ = std::make_unique<DecodeService>(*loop_, *importer_, service_options, *metrics_);

  WorkerServer::Served served;
  served.role = v1::DECODE;
  served.service = service_.get();
  served.lifecycle = service_.get();
  served.service_name = v1::DecodeWorker::service_full_name();
  served.more_services = {{v1::KvHandoff::service_full_name(), handoff_service_.get()}};
  served.max_receive_message_bytes = kMaxMessageBytes;
  const Engine& engine = loop_->engine();
  served.registration.set_handoff_tcp_address(tcp_address_);
  served.registration.set_model_fingerprint(engine.model_fingerprint());
  served.registration.set_index_pattern(FormatIndexPattern(engine.patterns().base()));
  served.registration.set_length_patterns(engine.patterns().FormatRanges());
  served.listening_detail =
      absl::StrCat(tcp_address_.empty() ? "" : absl::StrCat(" (TCP handoff data plane on ", tcp_address_, ")"),
                   nccl_address_.empty() ? ""
                                         : absl::StrCat(" (NCCL handoff on GPU ", options_.nccl_gpu, ", control on ",
                                                        nccl_address_, ")"));
  served.stop_listeners = [this] { StopDataPlanes(); };
  served.metrics = metrics_->registry();
  return server_.Start(std::move(served));
}

void DecodeWorker::Drain() { server_.Drain(); }

void DecodeWorker::Wait() { server_.Wait(); }

}  // namespace indexcache
