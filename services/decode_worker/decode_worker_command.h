// The decode worker's command line (flags, signals, drain), shared by `indexcache decode-worker` and
// the standalone indexcache-decode-worker binary. Returns the process exit status.
#pragma once

#include <string>
#include <vector>

namespace indexcache {

int RunDecodeWorkerCommand(const std::vector<std::string>& argv);

}  // namespace indexcache
