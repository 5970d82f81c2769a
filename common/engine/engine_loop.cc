#include "common/engine/engine_loop.h"

#include "common/util/logging.h"

namespace indexcache {

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  load_.Publish(*engine_);
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void EngineLoop::Enqueue(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  wake_.notify_all();
}

void EngineLoop::Wake() {
  // Under the lock: the loop is either before its check (and sees the change) or waiting (and wakes).
  std::lock_guard<std::mutex> lock(mu_);
  wake_.notify_all();
}

void EngineLoop::Dispatch(const TokenEvent& event) {
  auto it = sinks_.find(event.request);
  if (it == sinks_.end()) return;
  it->second(event);
  if (event.finish != RequestFinish::kNone) sinks_.erase(event.request);
}

void EngineLoop::Step() {
  auto events = engine_->Step();
  // Published before the events go out: whoever reacts to a finish reads a load that shows it.
  load_.Publish(*engine_);
  if (!events.ok()) {
    // A failed step leaves the batch's requests in an unknown state: end every request with the
    // error rather than the process, and free their cache.
    IC_LOG(Error) << "engine step failed: " << events.status();
    std::vector<RequestId> ids;
    for (const auto& [id, sink] : sinks_) ids.push_back(id);
    for (RequestId id : ids) engine_->Release(id);
    load_.Publish(*engine_);
    for (RequestId id : ids) Dispatch(TokenEvent::Ended(id, RequestFinish::kError, events.status()));
    return;
  }
  for (const TokenEvent& event : *events) Dispatch(event);
}

void EngineLoop::Run() {
  for (;;) {
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || !tasks_.empty() || engine_->HasWork(); });
      if (stopping_) break;
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();
    if (!tasks.empty()) load_.Publish(*engine_);
    if (engine_->HasWork()) Step();
  }
  for (const auto& [id, sink] : sinks_) sink(TokenEvent::Ended(id, RequestFinish::kAbort));
}

}  // namespace indexcache
