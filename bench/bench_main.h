// main() of a benchmark binary: runs it and turns its status into the exit code, the error (and the
// usage) on stderr.
#pragma once

#include <cstdio>
#include <string>

#include "absl/status/status.h"

namespace indexcache::bench {

inline int BenchMain(const char* name, absl::Status (*run)(int, char**), int argc, char** argv,
                     const char* usage = "") {
  const absl::Status status = run(argc, argv);
  if (status.ok()) return 0;
  std::fprintf(stderr, "%s: %s\n%s", name, std::string(status.message()).c_str(), usage);
  return 1;
}

}  // namespace indexcache::bench
