#include "bench/run_info.h"

#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <fstream>

namespace indexcache::bench {

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string line;
  std::getline(in, line);
  return line;
}

RunInfo ProbeMachine() {
  RunInfo info;
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  info.date = date;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      info.cpu_model = line.substr(line.find(':') + 2);
      break;
    }
  }
  info.logical_cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  info.omp_wait_policy = policy == nullptr ? "" : policy;
  info.load_before = LoadAverage();
  return info;
}

}  // namespace indexcache::bench
