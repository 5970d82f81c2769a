// The prefill worker's command line (flags, signals, drain), shared by `indexcache prefill-worker` and
// the standalone indexcache-prefill-worker binary. Returns the process exit status.
#pragma once

#include <string>
#include <vector>

namespace indexcache {

int RunPrefillWorkerCommand(const std::vector<std::string>& argv);

}  // namespace indexcache
