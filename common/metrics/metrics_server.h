// Serves a prometheus-cpp registry's text exposition at GET /metrics over HTTP/1.1 (Boost.Beast), on
// a thread of its own. Ours rather than prometheus-cpp's civetweb Exposer: that one failed to start
// ("null context when constructing CivetServer") in processes that had loaded libcublas, and every
// service here may be built with CUDA.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   ASSIGN_OR_RETURN(auto server, MetricsServer::Start("0.0.0.0:9400", registry, [&] { RefreshGauges(); }));
//   server->address();   // "127.0.0.1:9400" when the port was 0: the bound one
//
// GET /metrics answers 200; other paths 404, other methods on /metrics 405, requests that
// do not parse 400 (then the connection closes). Each connection has an idle timeout, so a silent
// client cannot hold it.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace indexcache {

class MetricsServer {
 public:
  // Runs on the server's thread before every scrape, to refresh values that are read rather than
  // counted (gauges of queue lengths, the engine's counters since the last scrape).
  using BeforeScrape = std::function<void()>;

  // Binds `listen_address` ("host:port"; port 0 picks a free one) and starts serving `registry`.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen_address,
                                                              std::shared_ptr<prometheus::Collectable> registry,
                                                              BeforeScrape before_scrape = nullptr);
  // Stops accepting, closes every connection and joins the thread.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "host:port" bound (a wildcard host reads as 127.0.0.1, the address to scrape locally).
  const std::string& address() const;

 private:
  class Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace indexcache
