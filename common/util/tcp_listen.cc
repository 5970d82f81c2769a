#include "common/util/tcp_listen.h"

#include "absl/strings/str_cat.h"
#include "common/util/host_port.h"
#include "common/util/status_macros.h"

namespace indexcache {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

absl::StatusOr<std::string> ListenTcp(tcp::acceptor& acceptor, const std::string& listen_address,
                                      const std::string& what) {
  absl::StatusOr<HostPort> parsed = SplitHostPort(listen_address);
  if (!parsed.ok()) return Annotate(parsed.status(), absl::StrCat("the ", what, " listen address"));
  const HostPort& where = *parsed;
  const auto fail = [&](const boost::system::error_code& ec) {
    return absl::UnavailableError(absl::StrCat("cannot serve ", what, " on ", listen_address, ": ", ec.message()));
  };
  boost::system::error_code ec;
  tcp::resolver resolver(acceptor.get_executor());
  const auto endpoints = resolver.resolve(where.host.empty() ? "0.0.0.0" : where.host, std::to_string(where.port),
                                          tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec) return fail(ec);
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  if (acceptor.open(endpoint.protocol(), ec); ec) return fail(ec);
  if (acceptor.set_option(asio::socket_base::reuse_address(true), ec); ec) return fail(ec);
  if (acceptor.bind(endpoint, ec); ec) return fail(ec);
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) return fail(ec);
  const tcp::endpoint bound = acceptor.local_endpoint(ec);
  if (ec) return fail(ec);
  const asio::ip::address host = bound.address().is_unspecified() ? asio::ip::address_v4::loopback() : bound.address();
  return host.is_v6() ? absl::StrCat("[", host.to_string(), "]:", bound.port())
                      : absl::StrCat(host.to_string(), ":", bound.port());
}

}  // namespace indexcache
