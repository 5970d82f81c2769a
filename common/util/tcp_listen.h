// Binds a Boost.Asio acceptor to "host:port" (port 0: any free port; an empty host: every IPv4
// interface) and starts listening, then accepts: what each of our small HTTP servers (/metrics, the
// OpenAI API) does.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "boost/asio/ip/tcp.hpp"

namespace indexcache {

// Returns the address bound, as clients dial it ("127.0.0.1:41234"; a wildcard host reads as
// 127.0.0.1, IPv6 in brackets). UNAVAILABLE naming `what` ("metrics") when it cannot listen.
absl::StatusOr<std::string> ListenTcp(boost::asio::ip::tcp::acceptor& acceptor, const std::string& listen_address,
                                      const std::string& what);

// Accepts on `acceptor` until it is closed or its context stops, handing each accept's outcome — a
// connection's socket, or the error of a failed accept, after which accepting goes on — to
// `on_accept` on the context's thread. The acceptor must outlive the accepting.
using AcceptHandler = std::function<void(const boost::system::error_code&, boost::asio::ip::tcp::socket)>;
void AcceptEach(boost::asio::ip::tcp::acceptor& acceptor, AcceptHandler on_accept);

}  // namespace indexcache
