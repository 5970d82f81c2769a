#include "tools/indexcache/run_directory.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace indexcache::cli {

absl::StatusOr<std::unique_ptr<RunDirectory>> RunDirectory::Create() {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/indexcache-run-XXXXXX");
  // mkdtemp creates it 0700.
  if (mkdtemp(path.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot make a run directory ", path, ": ", std::strerror(errno)));
  }
  return std::unique_ptr<RunDirectory>(new RunDirectory(std::move(path)));
}

RunDirectory::~RunDirectory() {
  std::error_code ignored;  // nothing to do about a directory that cannot be removed at exit
  std::filesystem::remove_all(path_, ignored);
}

absl::StatusOr<std::string> RunDirectory::WriteClusterToken(absl::string_view secret) const {
  const std::string file = absl::StrCat(path_, "/cluster-token");
  // O_EXCL: never reuse a file someone else made; 0600 from creation, so the secret is never readable
  // by others, not even for a moment.
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", file, ": ", std::strerror(errno)));
  const std::string line = absl::StrCat(secret, "\n");
  const bool written = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const int write_errno = errno;
  close(fd);
  if (!written) {
    return absl::UnavailableError(absl::StrCat("cannot write the cluster token to ", file, ": ",
                                               std::strerror(write_errno)));
  }
  return file;
}

}  // namespace indexcache::cli
