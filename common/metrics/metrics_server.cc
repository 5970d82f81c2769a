#include "common/metrics/metrics_server.h"

#include <array>
#include <chrono>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "common/util/tcp_listen.h"
#include "prometheus/text_serializer.h"

namespace indexcache {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// A scrape request is a request line and a few headers; anything bigger is not a scraper.
constexpr uint32_t kMaxHeaderBytes = 16 * 1024;
constexpr uint64_t kMaxBodyBytes = 16 * 1024;
// A connection idle this long (no complete request, or a client that stopped reading) is closed.
constexpr std::chrono::seconds kIdleTimeout{30};
// After the last response, how long a connection reads (and drops) what the client still sends.
constexpr std::chrono::seconds kLinger{5};
constexpr char kMetricsPath[] = "/metrics";
// The Prometheus text exposition format, version 0.0.4.
constexpr char kExpositionContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// One client connection: read a request, answer it, and again while the client keeps it alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, prometheus::Collectable& registry, const MetricsServer::BeforeScrape& before_scrape)
      : stream_(std::move(socket)), registry_(registry), before_scrape_(before_scrape) {}

  void Read() {
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    parser_->body_limit(kMaxBodyBytes);
    stream_.expires_after(kIdleTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, size_t) { self->OnRead(ec); });
  }

 private:
  void OnRead(error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted) {
      Close();
      return;
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category()) {
      // The bytes are not HTTP (or exceed our limits): say so, then hang up.
      Respond(Plain(http::status::bad_request, absl::StrCat("malformed request: ", ec.message(), "\n"), 11, false));
      return;
    }
    if (ec) {  // reset by the peer, or another socket error: nothing to answer
      Close();
      return;
    }
    Respond(Answer(parser_->get()));
  }

  http::response<http::string_body> Answer(const http::request<http::string_body>& request) {
    const bool keep_alive = request.keep_alive();
    const int version = request.version();
    const beast::string_view target = request.target();
    const beast::string_view path = target.substr(0, target.find('?'));
    if (path != kMetricsPath) {
      return Plain(http::status::not_found, "not found: metrics are served at /metrics\n", version, keep_alive);
    }
    if (request.method() != http::verb::get) {
      auto response = Plain(http::status::method_not_allowed, "only GET is allowed\n", version, keep_alive);
      response.set(http::field::allow, "GET");
      return response;
    }
    if (before_scrape_) before_scrape_();
    std::ostringstream text;
    prometheus::TextSerializer().Serialize(text, registry_.Collect());
    http::response<http::string_body> response{http::status::ok, version};
    response.set(http::field::content_type, kExpositionContentType);
    response.keep_alive(keep_alive);
    response.body() = std::move(text).str();
    response.prepare_payload();
    return response;
  }

  static http::response<http::string_body> Plain(http::status status, std::string body, int version,
                                                 bool keep_alive) {
    http::response<http::string_body> response{status, version};
    response.set(http::field::content_type, "text/plain; charset=utf-8");
    response.keep_alive(keep_alive);
    response.body() = std::move(body);
    response.prepare_payload();
    return response;
  }

  void Respond(http::response<http::string_body> response) {
    auto owned = std::make_shared<http::response<http::string_body>>(std::move(response));
    stream_.expires_after(kIdleTimeout);
    http::async_write(stream_, *owned, [self = shared_from_this(), owned](error_code ec, size_t) {
      if (ec) {
        self->Close();
      } else if (!owned->keep_alive()) {
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
        self->stream_.expires_after(kLinger);
        self->Linger();
      } else {
        self->Read();
      }
    });
  }

  // Closing a socket with unread input makes the kernel send a reset, which can overtake the response
  // (a 400 to a request whose headers were cut off, say): read until the client closes, then close.
  void Linger() {
    stream_.async_read_some(asio::buffer(discard_), [self = shared_from_this()](error_code ec, size_t) {
      if (ec) {
        self->Close();
      } else {
        self->Linger();
      }
    });
  }

  void Close() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::array<char, 4096> discard_;
  std::optional<http::request_parser<http::string_body>> parser_;
  prometheus::Collectable& registry_;
  const MetricsServer::BeforeScrape& before_scrape_;
};

}  // namespace

class MetricsServer::Impl {
 public:
  Impl(std::shared_ptr<prometheus::Collectable> registry, BeforeScrape before_scrape)
      : registry_(std::move(registry)), before_scrape_(std::move(before_scrape)), acceptor_(io_) {}

  ~Impl() {
    // Stopping the context abandons every pending operation; destroying it (after the acceptor)
    // destroys their handlers, and with them the sessions and their sockets.
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  absl::Status Listen(const std::string& listen_address) {
    ASSIGN_OR_RETURN(address_, ListenTcp(acceptor_, listen_address, "metrics"));
    AcceptEach(acceptor_, [this](const error_code& ec, tcp::socket socket) {
      if (ec) {
        IC_LOG(Warning) << "metrics server: accept failed: " << ec.message();
        return;
      }
      std::make_shared<Session>(std::move(socket), *registry_, before_scrape_)->Read();
    });
    thread_ = std::thread([this] { io_.run(); });
    return absl::OkStatus();
  }

  const std::string& address() const { return address_; }

 private:
  const std::shared_ptr<prometheus::Collectable> registry_;
  const BeforeScrape before_scrape_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::string address_;
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen_address,
                                                                    std::shared_ptr<prometheus::Collectable> registry,
                                                                    BeforeScrape before_scrape) {
  if (registry == nullptr) return absl::InvalidArgumentError("the metrics server needs a registry");
  auto impl = std::make_unique<Impl>(std::move(registry), std::move(before_scrape));
  RETURN_IF_ERROR(impl->Listen(listen_address));
  IC_LOG(Info) << "metrics at http://" << impl->address() << kMetricsPath;
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() = default;

const std::string& MetricsServer::address() const { return impl_->address(); }

}  // namespace indexcache
