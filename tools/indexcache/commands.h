// The `indexcache` subcommands. Each parses its own flags and returns the process exit status.
#pragma once

#include <string>
#include <vector>

namespace indexcache::cli {

int RunGenerate(const std::vector<std::string>& argv);
int RunScore(const std::vector<std::string>& argv);
int RunPerplexity(const std::vector<std::string>& argv);
int RunSearch(const std::vector<std::string>& argv);
int RunCluster(const std::vector<std::string>& argv);
int RunClient(const std::vector<std::string>& argv);

// Prints "indexcache <command>: <message>" to stderr and returns the exit status for errors.
int Fail(const std::string& command, const std::string& message);

}  // namespace indexcache::cli
