// Who ran a benchmark, where and when: the header every report starts with.
#pragma once

#include <cstdint>
#include <string>

namespace indexcache::bench {

struct RunInfo {
  std::string date;       // UTC, ISO 8601
  std::string cpu_model;  // /proc/cpuinfo "model name"
  int logical_cores = 0;
  std::string git_commit;
  std::string command_line;
  std::string omp_wait_policy;  // the environment's value ("" = unset)
  std::string load_before;      // /proc/loadavg before and after: the machine is shared
  std::string load_after;
  std::string model_dir;
  int32_t max_batch_tokens = 0;
  double total_seconds = 0.0;
};

// Fills the fields the process can read itself (date, CPU, cores, OMP_WAIT_POLICY, load).
RunInfo ProbeMachine();
std::string LoadAverage();

// The markdown lines a report opens with after its title: the command (with OMP_WAIT_POLICY, which
// changes CPU timings) and the machine with its load before and after the run.
std::string CommandAndMachineLines(const RunInfo& info, int argc, char** argv);

}  // namespace indexcache::bench
