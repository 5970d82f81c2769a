// What this binary is: the project version (CMake's project(VERSION)), the git commit of the tree it
// was built from (read at every build, "unknown" outside a git checkout, "-dirty" with uncommitted
// changes), and the backends compiled in. Shown by `--version` and the `indexcache_build_info` gauge.
#pragma once

#include <string>

namespace indexcache {

struct BuildInfo {
  std::string version;   // "0.1.0"
  std::string commit;    // "3f4c4bf1a2b3", "3f4c4bf1a2b3-dirty" or "unknown"
  std::string backends;  // "cpu" or "cpu,cuda"
};

const BuildInfo& GetBuildInfo();

// "<program> 0.1.0 (commit 3f4c4bf1a2b3, backends cpu)"
std::string VersionLine(const std::string& program);

}  // namespace indexcache
