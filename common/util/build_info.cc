#include "common/util/build_info.h"

#include "absl/strings/str_cat.h"
#include "common/util/build_commit.h"  // generated at build time: INDEXCACHE_COMMIT

namespace indexcache {

const BuildInfo& GetBuildInfo() {
  static const BuildInfo info{INDEXCACHE_VERSION, INDEXCACHE_COMMIT, INDEXCACHE_BACKENDS};
  return info;
}

std::string VersionLine(const std::string& program) {
  const BuildInfo& info = GetBuildInfo();
  return absl::StrCat(program, " ", info.version, " (commit ", info.commit, ", backends ", info.backends, ")");
}

}  // namespace indexcache
