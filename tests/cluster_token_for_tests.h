// The cluster token the tests' routers and workers share, in memory and as a file for the services
// started as child processes: tests run the internal plane authenticated, as production does.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "common/auth/cluster_token.h"

namespace indexcache::testing {

inline constexpr char kTestClusterSecret[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

inline const ClusterToken& TestClusterToken() {
  static const ClusterToken token = *ClusterToken::FromSecret(kTestClusterSecret);
  return token;
}

// A file holding kTestClusterSecret (one per test process), for --cluster-token-file.
inline const std::string& TestClusterTokenFile() {
  static const std::string path = [] {
    const char* tmp = std::getenv("TMPDIR");
    const std::string file = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/indexcache-test-token-" +
                             std::to_string(getpid());
    std::ofstream(file) << kTestClusterSecret << "\n";
    return file;
  }();
  return path;
}

}  // namespace indexcache::testing
