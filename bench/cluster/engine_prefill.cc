#include "bench/cluster/engine_prefill.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench/first_token.h"
#include "bench/prompts.h"
#include "bench/timing.h"
#include "common/kv/kv_segment.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {
namespace {

// A prefill worker's sink without the network: a thread takes each segment in order, waits for every
// slice to land in host staging (as the sender does before writing it) and drops it, so staging is
// reused as in the service. Ready holds the engine back at two queued segments, like the worker's.
class DroppingSink final : public SegmentSink {
 public:
  DroppingSink() : consumer_([this] { Consume(); }) {}
  ~DroppingSink() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    changed_.notify_all();
    consumer_.join();
  }

  void Take(KvSegment segment) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued_.push_back(std::move(segment));
    }
    changed_.notify_all();
  }
  bool Ready() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_.size() < 2;
  }
  // Blocks until every segment handed over has landed; the first export failure, if any.
  absl::Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return queued_.empty() && !busy_; });
    return failure_;
  }

 private:
  void Consume() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      changed_.wait(lock, [&] { return closing_ || !queued_.empty(); });
      if (queued_.empty()) return;
      KvSegment segment = std::move(queued_.front());
      queued_.pop_front();
      busy_ = true;
      lock.unlock();
      absl::Status landed = absl::OkStatus();
      for (size_t i = 0; i < segment.slices().size() && landed.ok(); ++i) landed = segment.WaitFor(i);
      segment = KvSegment();
      lock.lock();
      busy_ = false;
      if (failure_.ok()) failure_ = landed;
      changed_.notify_all();
    }
  }

  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<KvSegment> queued_;  // guarded by mu_
  bool busy_ = false;             // guarded by mu_: a segment is being waited for
  bool closing_ = false;          // guarded by mu_
  absl::Status failure_;          // guarded by mu_
  std::thread consumer_;          // last: starts once the members it reads exist
};

// PrefillOnce with the export on: Submit → the first token, and every row landed in host staging.
absl::StatusOr<double> PrefillExportingOnce(Engine& engine, int32_t tokens, uint32_t seed) {
  auto sink = std::make_shared<DroppingSink>();
  ASSIGN_OR_RETURN(RequestId id, engine.SubmitPrefill(RandomPrompt(tokens, engine.config().vocab_size, seed),
                                                      Greedy(1), sink));
  const double start = NowSeconds();
  absl::Status done = StepToFirstToken(engine, id);  // the kPrefillDone event carries it
  if (done.ok()) done = sink->Drain();
  const double seconds = NowSeconds() - start;
  engine.Release(id);  // frees it whether held after kPrefillDone or stopped midway by a failure
  RETURN_IF_ERROR(done);
  return seconds;
}

}  // namespace

nlohmann::json MeasureEnginePrefill(const EngineOptions& options, const std::vector<PrefillCase>& cases) {
  nlohmann::json out = {{"cases", nlohmann::json::array()}};
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  if (!engine.ok()) {
    out["error"] = absl::StrCat("creating the engine: ", engine.status().ToString());
    return out;
  }
  out["kv_cache_blocks"] = (*engine)->cache().num_blocks();
  out["kv_cache_bytes_per_block"] = (*engine)->cache().bytes_per_block();
  uint32_t seed = 100;
  for (const PrefillCase& c : cases) {
    nlohmann::json r = {{"prompt_tokens", c.prompt_tokens}, {"warmups", c.warmups}};
    std::vector<double> seconds, export_seconds;
    for (int i = 0; i < c.warmups + c.reps; ++i) {
      absl::StatusOr<double> off = PrefillOnce(**engine, c.prompt_tokens, seed++);
      absl::StatusOr<double> on = off.ok() ? PrefillExportingOnce(**engine, c.prompt_tokens, seed++) : off;
      if (!on.ok()) {
        r["error"] = absl::StrCat(i < c.warmups ? "warm-up" : "repetition", " ", i, off.ok() ? " (export on): " : ": ",
                                  on.status().ToString());
        break;
      }
      if (i >= c.warmups) {
        seconds.push_back(*off);
        export_seconds.push_back(*on);
      }
    }
    r["seconds"] = seconds;
    r["median_s"] = Summarize(seconds).median;
    r["export_seconds"] = export_seconds;
    r["export_median_s"] = Summarize(export_seconds).median;
    out["cases"].push_back(r);
  }
  return out;
}

}  // namespace indexcache::bench
