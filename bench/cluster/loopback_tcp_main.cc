// indexcache_loopback_tcp: the loopback TCP ceiling on its own (cluster_ttft_bench measures it too).
//   indexcache_loopback_tcp [--gib N] [--write-mib M] [--reps R]    → one JSON line on stdout
#include <iostream>

#include "bench/cluster/loopback_tcp.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/args.h"

int main(int argc, char** argv) {
  using namespace indexcache;
  auto args = cli::Args::Parse(std::vector<std::string>(argv + 1, argv + argc), {"gib", "write-mib", "reps"}, {});
  auto gib = args.ok() ? args->GetDouble("gib") : args.status();
  auto write_mib = args.ok() ? args->GetInt("write-mib") : args.status();
  auto reps = args.ok() ? args->GetInt("reps") : args.status();
  if (!gib.ok() || !write_mib.ok() || !reps.ok()) {
    std::cerr << "usage: indexcache_loopback_tcp [--gib N (4)] [--write-mib M (16)] [--reps R (3)]\n";
    return 2;
  }
  auto rate = bench::MeasureLoopbackTcp(static_cast<uint64_t>(gib->value_or(4.0) * (1 << 30)),
                                        static_cast<size_t>(write_mib->value_or(16)) << 20,
                                        static_cast<int>(reps->value_or(3)));
  if (!rate.ok()) {
    std::cerr << "indexcache_loopback_tcp: " << rate.status() << "\n";
    return 1;
  }
  std::cout << nlohmann::json{{"bytes", rate->bytes},
                              {"write_bytes", rate->write_bytes},
                              {"seconds_median", rate->seconds.median},
                              {"seconds_min", rate->seconds.min},
                              {"reps", rate->seconds.reps},
                              {"gb_per_second", rate->bytes_per_second / 1e9}}
                   .dump()
            << "\n";
  return 0;
}
