// A service process started by `cluster up`: its stdout is a pipe the parent reads for the
// "listening ADDR" line the services print once they accept requests; after that, a thread copies
// whatever else the child prints to the parent's stderr. stderr (the logs) is inherited. The child
// gets SIGTERM when its parent dies (PR_SET_PDEATHSIG), so it drains and exits instead of serving on
// as an orphan after a `kill -9` of `cluster up`.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace indexcache::cli {

class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::string& name,
                                                             const std::vector<std::string>& argv);
  ~ChildProcess();

  // Waits for the line "listening ADDR" and returns ADDR; fails if the child exits or `timeout` passes.
  // From then on the child's stdout goes to the parent's stderr.
  absl::StatusOr<std::string> WaitListening(absl::Duration timeout) { return WaitLine("listening ", timeout); }
  // Waits for the next line starting with `prefix` and returns the rest of it; the same failures.
  // "KEY VALUE" lines before it are Announced; after "listening " nothing more is read here.
  absl::StatusOr<std::string> WaitLine(const std::string& prefix, absl::Duration timeout);
  // After WaitListening: the value of a "KEY VALUE" line printed before "listening" (for instance
  // "metrics ADDR"); empty when there was none.
  std::string Announced(const std::string& key) const;
  // Sends `signal` if the child still runs.
  void Signal(int signal);
  // Waits up to `timeout` for the child to exit, then kills it. Returns its exit status text.
  std::string Stop(absl::Duration timeout);
  bool Exited();
  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(std::string name, pid_t pid, int stdout_fd) : name_(std::move(name)), pid_(pid), stdout_fd_(stdout_fd) {}

  std::string name_;
  pid_t pid_;
  int stdout_fd_;
  bool reaped_ = false;
  int wait_status_ = 0;
  std::string buffered_;  // stdout read past the listening line
  std::map<std::string, std::string> announced_;  // "KEY VALUE" lines before it
  std::thread forwarder_;
};

}  // namespace indexcache::cli
