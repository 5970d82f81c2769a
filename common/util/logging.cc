#include "common/util/logging.h"

#include <sys/time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

namespace indexcache {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("INDEXCACHE_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  const std::string v(env);
  if (v == "debug") return LogLevel::kDebug;
  if (v == "warning") return LogLevel::kWarning;
  if (v == "error") return LogLevel::kError;
  return LogLevel::kInfo;
}

}  // namespace

bool LogEnabled(LogLevel level) {
  static const LogLevel threshold = LevelFromEnv();
  return level >= threshold;
}

LogMessage::LogMessage(LogLevel level, const char* file, int line) {
  static const char kLetters[] = {'D', 'I', 'W', 'E'};
  timeval now;
  gettimeofday(&now, nullptr);
  tm local;
  localtime_r(&now.tv_sec, &local);
  char stamp[32];
  const size_t len = std::strftime(stamp, sizeof(stamp), "%m%d %H:%M:%S", &local);
  std::snprintf(stamp + len, sizeof(stamp) - len, ".%03d", static_cast<int>(now.tv_usec / 1000));
  const char* base = std::strrchr(file, '/');
  stream_ << kLetters[static_cast<int>(level)] << stamp << ' '
          << (base ? base + 1 : file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string text = stream_.str();
  std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace indexcache
