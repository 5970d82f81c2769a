// indexcache-router: the cluster's router on its own (see router_command.h).
#include <string>
#include <vector>

#include "services/router/router_command.h"

int main(int argc, char** argv) {
  return indexcache::RunRouterCommand(std::vector<std::string>(argv + 1, argv + argc));
}
