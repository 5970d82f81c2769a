// A private directory (0700) for the files of services started on this machine — today the cluster
// token of their internal plane (0600) — removed with everything in it when the object goes. `cluster
// up`, the benchmarks' local cluster and the end-to-end tests start their services with it.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<RunDirectory> run, RunDirectory::Create());
//   ASSIGN_OR_RETURN(std::string secret, ClusterToken::GenerateSecret());
//   ASSIGN_OR_RETURN(std::string token_file, run->WriteClusterToken(secret));   // --cluster-token-file
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace indexcache::cli {

class RunDirectory {
 public:
  // A fresh directory under $TMPDIR (else /tmp) that only this user may enter.
  static absl::StatusOr<std::unique_ptr<RunDirectory>> Create();
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  const std::string& path() const { return path_; }
  // Writes `secret` as one line to a new file only this user may read (created 0600, never widened);
  // returns its path, for --cluster-token-file.
  absl::StatusOr<std::string> WriteClusterToken(absl::string_view secret) const;

 private:
  explicit RunDirectory(std::string path) : path_(std::move(path)) {}
  const std::string path_;
};

}  // namespace indexcache::cli
