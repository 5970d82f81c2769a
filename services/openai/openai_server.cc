#include "services/openai/openai_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "common/util/tcp_listen.h"
#include "services/openai/openai_error.h"
#include "services/openai/openai_response.h"

namespace indexcache::openai {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr uint32_t kMaxHeaderBytes = 16 * 1024;
constexpr uint64_t kMaxBodyBytes = 8 * 1024 * 1024;
constexpr int kIdleTimeoutMs = 60'000;

// One client connection, served on its own thread; Shutdown may come from any thread.
class Connection final : public HttpExchange {
 public:
  explicit Connection(tcp::socket socket) : socket_(std::move(socket)), fd_(socket_.native_handle()) {}

  void Serve(const OpenAiApi& api) {
    beast::flat_buffer buffer;
    while (!broken_) {
      // Waiting for the next request is where an idle keep-alive connection is dropped.
      if (buffer.size() == 0 && !WaitReadable()) break;
      http::request_parser<http::string_body> parser;
      parser.header_limit(kMaxHeaderBytes);
      parser.body_limit(kMaxBodyBytes);
      error_code ec;
      http::read_header(socket_, buffer, parser, ec);
      if (!ec && parser.get()[http::field::expect] == "100-continue") {
        // curl asks before sending a body over 1 KiB; without the answer it waits a second.
        http::response<http::empty_body> proceed{http::status::continue_, parser.get().version()};
        http::write(socket_, proceed, ec);
      }
      if (!ec) http::read(socket_, buffer, parser, ec);
      if (ec) {
        Refuse(ec);
        break;
      }
      http::request<http::string_body>& request = parser.get();
      version_ = request.version();
      keep_alive_ = request.keep_alive();
      const HttpRequest call{std::string(request.method_string()), std::string(request.target()),
                             std::string(request[http::field::authorization]), std::move(request.body())};
      api.Handle(call, *this);
      if (!keep_alive_) break;
    }
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
  }

  // Unblocks every read and write of the connection's thread (safe from another thread: it is the
  // system call, not asio's object, that is used).
  void Shutdown() { ::shutdown(fd_, SHUT_RDWR); }

  bool SendJson(int status, const nlohmann::json& body) override {
    http::response<http::string_body> response{static_cast<http::status>(status), version_};
    response.set(http::field::content_type, "application/json");
    response.keep_alive(keep_alive_);
    response.body() = Dump(body);
    response.prepare_payload();
    return Check(http::write(socket_, response, ec_));
  }

  bool StartEvents() override {
    http::response<http::empty_body> response{http::status::ok, version_};
    response.set(http::field::content_type, "text/event-stream");
    response.set(http::field::cache_control, "no-cache");
    response.keep_alive(keep_alive_);
    response.chunked(true);
    http::response_serializer<http::empty_body> serializer{response};
    return Check(http::write_header(socket_, serializer, ec_));
  }

  bool SendEvent(const std::string& payload) override {
    const std::string event = absl::StrCat("data: ", payload, "\n\n");
    return Check(asio::write(socket_, http::make_chunk(asio::buffer(event)), ec_));
  }

  bool EndEvents() override { return Check(asio::write(socket_, http::make_chunk_last(), ec_)); }

  int socket_fd() const override { return fd_; }

  bool SendBusy() {
    keep_alive_ = false;
    return SendJson(503, ErrorBody(absl::UnavailableError("too many open connections; retry later")));
  }

 private:
  bool WaitReadable() {
    pollfd watched{fd_, POLLIN, 0};
    return poll(&watched, 1, kIdleTimeoutMs) > 0 && (watched.revents & POLLIN) != 0;
  }

  bool Check(size_t) {
    if (ec_) broken_ = true;
    return !ec_;
  }

  // A request that could not be read: answered when it is the client's fault, else dropped.
  void Refuse(const error_code& ec) {
    keep_alive_ = false;
    if (ec == http::error::body_limit) {
      SendJson(413, ErrorBody(absl::InvalidArgumentError(absl::StrCat("the request body exceeds ", kMaxBodyBytes, " bytes"))));
    } else if (ec == http::error::header_limit) {
      SendJson(431, ErrorBody(absl::InvalidArgumentError("the request headers are too large")));
    } else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message) {
      SendJson(400, ErrorBody(absl::InvalidArgumentError(absl::StrCat("malformed HTTP request: ", ec.message()))));
    }
  }

  tcp::socket socket_;
  const int fd_;
  int version_ = 11;
  bool keep_alive_ = true;
  bool broken_ = false;  // a write failed: the client is gone
  error_code ec_;
};

}  // namespace

class OpenAiServer::Impl {
 public:
  Impl(std::unique_ptr<OpenAiApi> api, int max_connections)
      : api_(std::move(api)), max_connections_(max_connections), acceptor_(io_) {}

  ~Impl() {
    io_.stop();
    if (accept_thread_.joinable()) accept_thread_.join();
    error_code ignored;
    acceptor_.close(ignored);
    std::unique_lock<std::mutex> lock(mu_);
    for (Connection* connection : live_) connection->Shutdown();
    gone_.wait(lock, [this] { return live_.empty(); });
  }

  absl::Status Listen(const std::string& listen_address) {
    ASSIGN_OR_RETURN(address_, ListenTcp(acceptor_, listen_address, "HTTP"));
    AcceptEach(acceptor_, [this](const error_code& ec, tcp::socket socket) {
      if (ec) {
        IC_LOG(Warning) << "HTTP server: accept failed: " << ec.message();
        return;
      }
      Spawn(std::make_unique<Connection>(std::move(socket)));
    });
    accept_thread_ = std::thread([this] { io_.run(); });
    return absl::OkStatus();
  }

  const std::string& address() const { return address_; }

 private:

  void Spawn(std::unique_ptr<Connection> connection) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(live_.size()) >= max_connections_) {
      connection->SendBusy();
      return;
    }
    live_.insert(connection.get());
    std::thread([this, connection = std::move(connection)]() mutable {
      connection->Serve(*api_);
      std::lock_guard<std::mutex> lock(mu_);
      // Closed under the lock, so that ~Impl never shuts down a connection being destroyed, and
      // before io_ (which its socket belongs to) can go.
      live_.erase(connection.get());
      connection.reset();
      gone_.notify_all();
    }).detach();
  }

  const std::unique_ptr<OpenAiApi> api_;
  const int max_connections_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::string address_;
  std::thread accept_thread_;
  std::mutex mu_;
  std::condition_variable gone_;
  std::set<Connection*> live_;
};

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(const std::string& listen_address,
                                                                  std::unique_ptr<OpenAiApi> api, int max_connections) {
  if (api == nullptr) return absl::InvalidArgumentError("the HTTP server needs the API it serves");
  auto impl = std::make_unique<Impl>(std::move(api), max_connections);
  RETURN_IF_ERROR(impl->Listen(listen_address));
  IC_LOG(Info) << "OpenAI-compatible API at http://" << impl->address() << "/v1";
  return std::unique_ptr<OpenAiServer>(new OpenAiServer(std::move(impl)));
}

OpenAiServer::OpenAiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

OpenAiServer::~OpenAiServer() = default;

const std::string& OpenAiServer::address() const { return impl_->address(); }

}  // namespace indexcache::openai
