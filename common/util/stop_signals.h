// SIGINT/SIGTERM handling for the long-running commands: block both in every thread (call before
// starting threads; they inherit the mask) and wait for one on a thread of the caller's choosing.
// Dispositions are reset to the default first: a process started in the background of a
// non-interactive shell inherits SIGINT as ignored, and an ignored signal is discarded rather than
// left pending, so sigwait would never see it.
#pragma once

#include <signal.h>

namespace indexcache {

sigset_t BlockStopSignals();
// Blocks until SIGINT or SIGTERM arrives; returns the signal number.
int WaitForStopSignal(const sigset_t& signals);

}  // namespace indexcache
