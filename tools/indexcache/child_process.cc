#include "tools/indexcache/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace indexcache::cli {

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::string& name,
                                                                  const std::vector<std::string>& argv) {
  int fds[2];
  // Close-on-exec: later children must not inherit this pipe (dup2 below clears the flag on fd 1).
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Dies with the parent (kept across execv). A parent already gone before this call sends nothing.
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(126);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    // The parent blocks SIGINT/SIGTERM to wait for them; the services must receive them again.
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    // Cluster processes share the machine's cores: OpenMP threads that spin while idle would starve
    // the other processes' busy ones (a tenfold slowdown on two cores). An explicit setting wins.
    setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  return std::unique_ptr<ChildProcess>(new ChildProcess(name, pid, fds[0]));
}

ChildProcess::~ChildProcess() {
  if (!reaped_) {
    Signal(SIGTERM);
    Stop(absl::Seconds(10));
  }
  if (forwarder_.joinable()) forwarder_.join();
  close(stdout_fd_);
}

absl::StatusOr<std::string> ChildProcess::WaitLine(const std::string& prefix, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    const size_t newline = buffered_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffered_.substr(0, newline);
      buffered_.erase(0, newline + 1);
      if (line.rfind(prefix, 0) == 0 && prefix != "listening ") return line.substr(prefix.size());
      if (line.rfind("listening ", 0) == 0) {
        // From now on copy the child's stdout to our stderr so its pipe never fills.
        forwarder_ = std::thread([fd = stdout_fd_, rest = buffered_] {
          if (!rest.empty()) (void)!write(STDERR_FILENO, rest.data(), rest.size());
          char buf[4096];
          ssize_t n;
          while ((n = read(fd, buf, sizeof(buf))) > 0) (void)!write(STDERR_FILENO, buf, n);
        });
        return line.substr(std::strlen("listening "));
      }
      if (const size_t space = line.find(' '); space != std::string::npos) {
        announced_[line.substr(0, space)] = line.substr(space + 1);
      }
      continue;
    }
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return absl::DeadlineExceededError(absl::StrCat(name_, " printed no '", prefix, "' line in time"));
    }
    pollfd p{stdout_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left_ms, 200))) <= 0) continue;
    char buf[1024];
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat(name_, " exited before its '", prefix, "' line (", Stop(absl::Seconds(1)), ")"));
    }
    buffered_.append(buf, n);
  }
}

std::string ChildProcess::Announced(const std::string& key) const {
  auto it = announced_.find(key);
  return it == announced_.end() ? std::string() : it->second;
}

void ChildProcess::Signal(int signal) {
  if (!Exited()) kill(pid_, signal);
}

bool ChildProcess::Exited() {
  if (reaped_) return true;
  if (waitpid(pid_, &wait_status_, WNOHANG) == pid_) reaped_ = true;
  return reaped_;
}

std::string ChildProcess::Stop(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Exited() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  if (!Exited()) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &wait_status_, 0);
    reaped_ = true;
    return "killed after the grace period";
  }
  if (WIFEXITED(wait_status_)) return absl::StrFormat("exit status %d", WEXITSTATUS(wait_status_));
  if (WIFSIGNALED(wait_status_)) return absl::StrFormat("signal %d", WTERMSIG(wait_status_));
  return "exited";
}

}  // namespace indexcache::cli
