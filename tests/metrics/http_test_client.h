// A blocking HTTP/1.1 client for the metrics server's tests (Boost.Beast), and a raw-bytes exchange
// for requests that are not HTTP at all.
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "common/util/host_port.h"

namespace indexcache::testing {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string allow;
  std::string body;
};

// Opens a connection to "host:port", each operation bounded by `timeout`.
inline absl::StatusOr<beast::tcp_stream> Connect(boost::asio::io_context& io, const std::string& address,
                                                 std::chrono::seconds timeout = std::chrono::seconds(10)) {
  absl::StatusOr<HostPort> where = SplitHostPort(address);
  if (!where.ok()) return where.status();
  beast::tcp_stream stream(io);
  stream.expires_after(timeout);
  boost::system::error_code ec;
  stream.connect(tcp::endpoint(boost::asio::ip::make_address(where->host), where->port), ec);
  if (ec) return absl::UnavailableError(absl::StrCat("connect ", address, ": ", ec.message()));
  return stream;
}

// One request and its response on an open stream (kept open when the server keeps it alive): a
// beast::tcp_stream, or a TLS stream over one.
template <typename Stream>
absl::StatusOr<HttpReply> Exchange(Stream& stream, http::verb method, const std::string& target,
                                   bool keep_alive = false) {
  http::request<http::string_body> request{method, target, 11};
  request.set(http::field::host, "localhost");
  request.keep_alive(keep_alive);
  request.prepare_payload();
  beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
  boost::system::error_code ec;
  http::write(stream, request, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("write: ", ec.message()));
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(stream, buffer, response, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("read: ", ec.message()));
  HttpReply reply;
  reply.status = response.result_int();
  reply.content_type = std::string(response[http::field::content_type]);
  reply.allow = std::string(response[http::field::allow]);
  reply.body = response.body();
  return reply;
}

inline absl::StatusOr<HttpReply> Get(const std::string& address, const std::string& target = "/metrics",
                                     http::verb method = http::verb::get) {
  boost::asio::io_context io;
  absl::StatusOr<beast::tcp_stream> stream = Connect(io, address);
  if (!stream.ok()) return stream.status();
  return Exchange(*stream, method, target);
}

// Sends `bytes` as they are and returns everything the server answers until it closes.
inline absl::StatusOr<std::string> RawExchange(const std::string& address, const std::string& bytes) {
  boost::asio::io_context io;
  absl::StatusOr<beast::tcp_stream> stream = Connect(io, address);
  if (!stream.ok()) return stream.status();
  boost::system::error_code ec;
  boost::asio::write(*stream, boost::asio::buffer(bytes), ec);
  if (ec) return absl::UnavailableError(absl::StrCat("write: ", ec.message()));
  std::string answer;
  char chunk[4096];
  for (;;) {
    const size_t n = stream->read_some(boost::asio::buffer(chunk), ec);
    answer.append(chunk, n);
    if (ec) break;  // eof once the server closed; a timeout would fail the caller's expectations
  }
  if (ec != boost::asio::error::eof && ec != boost::asio::error::connection_reset) {
    return absl::UnavailableError(absl::StrCat("read: ", ec.message()));
  }
  return answer;
}

}  // namespace indexcache::testing
