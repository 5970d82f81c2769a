// Runs an Engine on a thread of its own, so services can serve many RPCs while one loop owns the
// (single-threaded) engine: other threads send it closures (Call), and the loop steps the engine
// whenever it has work, handing each request's TokenEvents to that request's sink. After every
// closure and every step it publishes the engine's load, which any thread reads without waiting.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>

#include "absl/container/flat_hash_map.h"
#include "common/engine/engine.h"
#include "common/engine/published_load.h"

namespace indexcache {

class EngineLoop {
 public:
  // Called on the loop thread for every event of the request; must not block.
  using EventSink = std::function<void(const TokenEvent&)>;

  explicit EngineLoop(std::unique_ptr<Engine> engine);
  // Stops the thread; requests still running get an ABORT event first.
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Runs `fn(engine)` on the loop thread between steps and returns its result. What `fn` changed is
  // in TakeLoad by the time Call returns.
  template <typename Fn>
  auto Call(Fn&& fn) -> std::invoke_result_t<Fn, Engine&> {
    using Result = std::invoke_result_t<Fn, Engine&>;
    auto task = std::make_shared<std::packaged_task<Result()>>([&] {
      const PublishOnReturn publish(*this);  // before the result reaches the caller
      return fn(*engine_);
    });
    std::future<Result> done = task->get_future();
    Enqueue([task] { (*task)(); });
    return done.get();
  }

  // Runs `fn(engine)` on the loop thread between steps, after everything posted or called before it,
  // and returns at once (the caller learns nothing of the result: `fn` reports on its own).
  template <typename Fn>
  void Post(Fn&& fn) {
    Enqueue([this, fn = std::forward<Fn>(fn)]() mutable { fn(*engine_); });
  }

  // Routes `id`'s events to `sink` until one carries a finish. Only from inside Call (the loop
  // thread), in the same call that created the request, so no event can be missed.
  void Subscribe(RequestId id, EventSink sink) { sinks_[id] = std::move(sink); }

  // Makes the loop look at the engine again: after something outside it changed whether a request
  // can progress (a SegmentSink that became Ready).
  void Wake();

  // The engine's KV blocks, requests and counters as of the last closure or step (counters since the
  // previous TakeLoad); any thread, never waits for the loop (published_load.h).
  EngineLoad TakeLoad() { return load_.Take(); }
  // The prefix cache's keys a reader that applied (epoch, version) needs next; any thread, never
  // waits for the loop (published_load.h).
  CachedBlocksReport CachedBlocksSince(uint64_t epoch, uint64_t version, size_t max_keys) {
    return load_.CachedBlocksSince(epoch, version, max_keys);
  }
  void OnCachedBlocksChanged(std::function<void()> changed) { load_.OnCachedBlocksChanged(std::move(changed)); }
  int32_t CachedPrefixTokens(absl::Span<const int32_t> prompt, int64_t client_prompt_tokens) {
    return load_.CachedPrefixTokens(prompt, client_prompt_tokens);
  }

  // The engine's immutable parts (config, tokenizer) may be read from any thread.
  const Engine& engine() const { return *engine_; }

 private:
  struct PublishOnReturn {
    explicit PublishOnReturn(EngineLoop& loop) : loop(loop) {}
    ~PublishOnReturn() { loop.load_.Publish(*loop.engine_); }
    EngineLoop& loop;
  };

  void Enqueue(std::function<void()> task);
  void Run();
  void Step();
  void Dispatch(const TokenEvent& event);

  std::unique_ptr<Engine> engine_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  absl::flat_hash_map<RequestId, EventSink> sinks_;  // loop thread only
  PublishedLoad load_;
  std::thread thread_;
};

}  // namespace indexcache
