// The cluster token the in-process routers and workers of the component tests share: tests run the
// internal plane authenticated, as production does (the end-to-end tests' services get a fresh one
// in a file, e2e_common.h).
#pragma once

#include "common/auth/cluster_token.h"

namespace indexcache::testing {

inline constexpr char kTestClusterSecret[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

inline const ClusterToken& TestClusterToken() {
  static const ClusterToken token = *ClusterToken::FromSecret(kTestClusterSecret);
  return token;
}

}  // namespace indexcache::testing
