// indexcache-decode-worker: the decode worker as a standalone binary (for containers).
#include <string>
#include <vector>

#include "services/decode_worker/decode_worker_command.h"

int main(int argc, char** argv) {
  return indexcache::RunDecodeWorkerCommand(std::vector<std::string>(argv + 1, argv + argc));
}
