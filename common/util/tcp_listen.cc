#include "common/util/tcp_listen.h"

#include <memory>
#include <utility>

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

void AcceptEach(tcp::acceptor& acceptor, AcceptHandler on_accept) {
  // Each accept's handler starts the next one; the loop's state lives in the handlers.
  struct Loop : std::enable_shared_from_this<Loop> {
    Loop(tcp::acceptor& a, AcceptHandler f) : acceptor(a), on_accept(std::move(f)) {}
    void Next() {
      acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted) return;
        self->on_accept(ec, std::move(socket));
        self->Next();
      });
    }
    tcp::acceptor& acceptor;
    const AcceptHandler on_accept;
  };
  std::make_shared<Loop>(acceptor, std::move(on_accept))->Next();
}

}  // namespace indexcache
