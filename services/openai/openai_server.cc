#include "services/openai/openai_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
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

// One client connection, served on its own thread; Shutdown may come from any thread. What does not
// depend on the stream (plain TCP or TLS) is here, the reads and writes in StreamConnection.
class Connection : public HttpExchange {
 public:
  explicit Connection(int fd) : fd_(fd) {}

  // Reads requests and answers each until the client closes, stays idle too long or breaks off.
  virtual void Serve(const OpenAiApi& api) = 0;
  // Called on the accepting thread instead of Serve when the server is full.
  virtual void RefuseAsBusy() = 0;

  // Unblocks every read and write of the connection's thread (safe from another thread: it is the
  // system call, not asio's object, that is used).
  void Shutdown() { ::shutdown(fd_, SHUT_RDWR); }

  int socket_fd() const override { return fd_; }

 protected:
  // Whether the client sends something within the idle timeout.
  bool WaitReadable() const {
    pollfd watched{fd_, POLLIN, 0};
    return poll(&watched, 1, kIdleTimeoutMs) > 0 && (watched.revents & POLLIN) != 0;
  }

 private:
  const int fd_;
};

// `Stream` is tcp::socket (HTTP) or asio::ssl::stream<tcp::socket> (HTTPS).
template <typename Stream>
class StreamConnection final : public Connection {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, tcp::socket>;

  // `tls_context...`: the server's asio::ssl::context for HTTPS, nothing for HTTP.
  template <typename... TlsContext>
  explicit StreamConnection(tcp::socket socket, TlsContext&... tls_context)
      : Connection(socket.native_handle()), stream_(std::move(socket), tls_context...) {}

  void Serve(const OpenAiApi& api) override {
    if (Handshake()) ServeRequests(api);
    Close();
  }

  void RefuseAsBusy() override {
    // Over TLS an answer would need a handshake on the accepting thread: the client sees the close.
    if constexpr (!kTls) {
      keep_alive_ = false;
      SendJson(503, ErrorBody(absl::UnavailableError("too many open connections; retry later")));
    }
  }

  bool SendJson(int status, const nlohmann::json& body) override {
    http::response<http::string_body> response{static_cast<http::status>(status), version_};
    response.set(http::field::content_type, "application/json");
    response.keep_alive(keep_alive_);
    response.body() = Dump(body);
    response.prepare_payload();
    return Check(http::write(stream_, response, ec_));
  }

  bool StartEvents() override {
    http::response<http::empty_body> response{http::status::ok, version_};
    response.set(http::field::content_type, "text/event-stream");
    response.set(http::field::cache_control, "no-cache");
    response.keep_alive(keep_alive_);
    response.chunked(true);
    http::response_serializer<http::empty_body> serializer{response};
    return Check(http::write_header(stream_, serializer, ec_));
  }

  bool SendEvent(const std::string& payload) override {
    const std::string event = absl::StrCat("data: ", payload, "\n\n");
    return Check(asio::write(stream_, http::make_chunk(asio::buffer(event)), ec_));
  }

  bool EndEvents() override { return Check(asio::write(stream_, http::make_chunk_last(), ec_)); }

 private:
  // The TLS handshake, given the idle timeout to begin; nothing to do for plain HTTP. A client that
  // fails it (one speaking plain HTTP, one that does not trust the certificate) is closed unanswered.
  bool Handshake() {
    if constexpr (kTls) {
      if (!WaitReadable()) return false;
      error_code ec;
      stream_.handshake(asio::ssl::stream_base::server, ec);
      return !ec;
    }
    return true;
  }

  void ServeRequests(const OpenAiApi& api) {
    beast::flat_buffer buffer;
    while (!broken_) {
      // Waiting for the next request is where an idle keep-alive connection is dropped.
      if (buffer.size() == 0 && !DecryptedBytesWaiting() && !WaitReadable()) break;
      http::request_parser<http::string_body> parser;
      parser.header_limit(kMaxHeaderBytes);
      parser.body_limit(kMaxBodyBytes);
      error_code ec;
      http::read_header(stream_, buffer, parser, ec);
      if (!ec && parser.get()[http::field::expect] == "100-continue") {
        // curl asks before sending a body over 1 KiB; without the answer it waits a second.
        http::response<http::empty_body> proceed{http::status::continue_, parser.get().version()};
        http::write(stream_, proceed, ec);
      }
      if (!ec) http::read(stream_, buffer, parser, ec);
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
  }

  // Whether TLS holds bytes of the client's already read off the socket (a pipelined request), which
  // a poll of the socket would not see.
  bool DecryptedBytesWaiting() {
    if constexpr (kTls) {
      SSL* ssl = stream_.native_handle();
      return SSL_pending(ssl) > 0 || BIO_ctrl_pending(SSL_get_rbio(ssl)) > 0;
    }
    return false;
  }

  // Over TLS, sends close_notify without waiting for the client's (a blocking wait a silent client
  // could hold forever); then ends the sending side.
  void Close() {
    error_code ignored;
    if constexpr (kTls) {
      SSL_set_shutdown(stream_.native_handle(), SSL_RECEIVED_SHUTDOWN);
      stream_.shutdown(ignored);
    }
    beast::get_lowest_layer(stream_).shutdown(tcp::socket::shutdown_send, ignored);
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

  Stream stream_;
  int version_ = 11;
  bool keep_alive_ = true;
  bool broken_ = false;  // a write failed: the client is gone
  error_code ec_;
};

using HttpConnection = StreamConnection<tcp::socket>;
using HttpsConnection = StreamConnection<asio::ssl::stream<tcp::socket>>;

// The HTTPS server's OpenSSL context: TLS 1.2 or later, the certificate chain and key, and with a
// client CA, a client certificate required and verified.
absl::Status ConfigureTls(const ServerTls& tls, asio::ssl::context& context) {
  error_code ec;
  context.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                          asio::ssl::context::no_tlsv1_1,
                      ec);
  if (!ec) context.use_certificate_chain(asio::buffer(tls.certificate_chain), ec);
  if (!ec) context.use_private_key(asio::buffer(tls.private_key), asio::ssl::context::pem, ec);
  if (!ec && !tls.client_ca.empty()) {
    context.add_certificate_authority(asio::buffer(tls.client_ca), ec);
    if (!ec) context.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert, ec);
  }
  if (ec) return absl::InvalidArgumentError(absl::StrCat("the HTTP server cannot use its TLS identity: ", ec.message()));
  return absl::OkStatus();
}

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

  absl::Status Listen(const std::string& listen_address, const std::optional<ServerTls>& tls) {
    if (tls.has_value()) RETURN_IF_ERROR(ConfigureTls(*tls, tls_context_.emplace(asio::ssl::context::tls_server)));
    ASSIGN_OR_RETURN(address_, ListenTcp(acceptor_, listen_address, "HTTP"));
    AcceptEach(acceptor_, [this](const error_code& ec, tcp::socket socket) {
      if (ec) {
        IC_LOG(Warning) << "HTTP server: accept failed: " << ec.message();
        return;
      }
      if (tls_context_.has_value()) {
        Spawn(std::make_unique<HttpsConnection>(std::move(socket), *tls_context_));
      } else {
        Spawn(std::make_unique<HttpConnection>(std::move(socket)));
      }
    });
    accept_thread_ = std::thread([this] { io_.run(); });
    return absl::OkStatus();
  }

  const std::string& address() const { return address_; }

 private:

  void Spawn(std::unique_ptr<Connection> connection) {
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(live_.size()) >= max_connections_) {
      connection->RefuseAsBusy();
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
  std::optional<asio::ssl::context> tls_context_;  // set: HTTPS
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::string address_;
  std::thread accept_thread_;
  std::mutex mu_;
  std::condition_variable gone_;
  std::set<Connection*> live_;
};

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(const std::string& listen_address,
                                                                  std::unique_ptr<OpenAiApi> api,
                                                                  const std::optional<ServerTls>& tls,
                                                                  int max_connections) {
  if (api == nullptr) return absl::InvalidArgumentError("the HTTP server needs the API it serves");
  auto impl = std::make_unique<Impl>(std::move(api), max_connections);
  RETURN_IF_ERROR(impl->Listen(listen_address, tls));
  IC_LOG(Info) << "OpenAI-compatible API at " << (tls.has_value() ? "https://" : "http://") << impl->address()
               << "/v1";
  return std::unique_ptr<OpenAiServer>(new OpenAiServer(std::move(impl)));
}

OpenAiServer::OpenAiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

OpenAiServer::~OpenAiServer() = default;

const std::string& OpenAiServer::address() const { return impl_->address(); }

}  // namespace indexcache::openai
