#include "common/util/read_file.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace indexcache {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  if (!in || !(contents << in.rdbuf())) return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " from ", path));
  return contents.str();
}

}  // namespace indexcache
