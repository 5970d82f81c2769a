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

std::string CommandAndMachineLines(const RunInfo& info, int argc, char** argv) {
  std::string command = "OMP_WAIT_POLICY=" + info.omp_wait_policy;
  for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
  return "- command: `" + command + "`\n- date: " + info.date + "; CPU: " + info.cpu_model + ", " +
         std::to_string(info.logical_cores) + " logical cores; load before " + info.load_before + ", after " +
         info.load_after + "\n";
}

}  // namespace indexcache::bench
