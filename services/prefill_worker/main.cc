// indexcache-prefill-worker: the prefill worker as a standalone binary (for containers).
#include <string>
#include <vector>

#include "services/prefill_worker/prefill_worker_command.h"

int main(int argc, char** argv) {
  return indexcache::RunPrefillWorkerCommand(std::vector<std::string>(argv + 1, argv + argc));
}
