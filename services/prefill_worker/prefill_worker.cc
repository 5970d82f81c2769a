#include "services/prefill_worker/prefill_worker.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine_loop.h"
#include "common/handoff/handoff_transports.h"
#include "common/handoff/nccl/nccl_handoff.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"
#include "services/common/worker_metrics.h"
#include "services/prefill_worker/prefill_service.h"

namespace indexcache {
namespace {

// Prompts arrive as repeated int32 (up to 5 bytes a token): room for very long contexts.
constexpr int kMaxMessageBytes = 64 << 20;

}  // namespace

PrefillWorker::PrefillWorker(const PrefillWorkerOptions& options) : server_(options.server) {}

absl::StatusOr<std::unique_ptr<PrefillWorker>> PrefillWorker::Create(const PrefillWorkerOptions& options) {
  RETURN_IF_ERROR(ValidateWorkerServerOptions(options.server));
  if (options.max_queued_prompt_tokens < 0) {
    return absl::InvalidArgumentError("max_queued_prompt_tokens must be >= 0 (0: no bound)");
  }
  if (options.handoff_connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the handoff connect timeout must be positive");
  }
  std::unique_ptr<PrefillWorker> worker(new PrefillWorker(options));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options.engine));
  const int engine_gpu = engine->cuda_device();
  const std::vector<IndexerType>& pattern = engine->patterns().base();
  const auto full = static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), IndexerType::kFull));
  worker->metrics_ = std::make_unique<WorkerMetrics>(v1::PREFILL, full, static_cast<int32_t>(pattern.size()) - full,
                                                     engine->patterns().Named());
  worker->loop_ = std::make_unique<EngineLoop>(std::move(engine));
  PrefillServiceOptions service;
  service.max_queued_prompt_tokens = options.max_queued_prompt_tokens;
  service.job.connect_timeout = options.handoff_connect_timeout;
  service.cluster_token = options.server.cluster_token;
  worker->transports_ = HandoffTransports::WithDefaults(options.server.cluster_token);
  if (options.nccl_gpu >= 0) {
    ASSIGN_OR_RETURN(std::unique_ptr<PeerChannelFactory> channels, options.nccl_channels(options.nccl_gpu));
    worker->transports_->Add(std::make_unique<NcclHandoffClient>(
        std::move(channels),
        NcclHandoffOptions{.token = options.server.cluster_token,
                           .rows = options.nccl_rows.value_or(NcclRowsMemory(engine_gpu, options.nccl_gpu))}));
  }
  service.job.transports = worker->transports_.get();
  worker->service_ = std::make_unique<PrefillService>(*worker->loop_, service, *worker->metrics_);
  return worker;
}

// The server member aborts the calls in flight if Drain did not end them.
PrefillWorker::~PrefillWorker() = default;

absl::StatusOr<std::string> PrefillWorker::Start() {
  WorkerServer::Served served;
  served.role = v1::PREFILL;
  served.service = service_.get();
  served.lifecycle = service_.get();
  served.service_name = v1::PrefillWorker::service_full_name();
  served.max_receive_message_bytes = kMaxMessageBytes;
  const Engine& engine = loop_->engine();
  served.registration.set_model_fingerprint(engine.model_fingerprint());
  served.registration.set_index_pattern(FormatIndexPattern(engine.patterns().base()));
  served.registration.set_length_patterns(engine.patterns().FormatRanges());
  served.listening_detail = absl::StrCat(" (handoff transports: ", transports_->Describe(), ")");
  served.metrics = metrics_->registry();
  return server_.Start(std::move(served));
}

void PrefillWorker::Drain() { server_.Drain(); }

void PrefillWorker::Wait() { server_.Wait(); }

}  // namespace indexcache
