// Minimal leveled logging to stderr ("I1122 05:40:01.123 engine.cc:42] message"). Abseil's logging
// library is newer than Debian 12's Abseil, so the engine carries this small one. The level comes from
// INDEXCACHE_LOG_LEVEL (debug|info|warning|error; default info).
#pragma once

#include <sstream>

namespace indexcache {

enum class LogLevel { kDebug = 0, kInfo, kWarning, kError };

bool LogEnabled(LogLevel level);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace indexcache

#define IC_LOG(level)                                              \
  if (!::indexcache::LogEnabled(::indexcache::LogLevel::k##level)) \
    ;                                                              \
  else                                                             \
    ::indexcache::LogMessage(::indexcache::LogLevel::k##level, __FILE__, __LINE__).stream()
