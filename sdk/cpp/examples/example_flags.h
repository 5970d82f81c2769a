// The examples' few flags: `--name value` pairs, each example naming the ones it accepts. Kept here
// rather than borrowed from the CLI so that the examples build against the client library alone.
#pragma once

#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "indexcache/client.h"

namespace indexcache::client::examples {

struct ExampleFlags {
  std::map<std::string, std::string> values;

  std::optional<std::string> Get(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  }
};

// Exits with a usage line on an unknown flag, a missing value or a missing --router/--prompt.
inline ExampleFlags ParseFlags(int argc, char** argv, const std::set<std::string>& extra) {
  const std::string usage = std::string("usage: ") + argv[0] +
                            " --router ADDR --prompt TEXT [--max-new-tokens N] [--temperature T]"
                            " [--timeout SECONDS]" +
                            (extra.empty() ? "" : " [--" + *extra.begin() + " N]");
  std::set<std::string> known = {"router", "prompt", "max-new-tokens", "temperature", "timeout"};
  known.insert(extra.begin(), extra.end());
  ExampleFlags flags;
  for (int i = 1; i < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || !known.contains(arg.substr(2)) || i + 1 >= argc) {
      std::cerr << "bad argument '" << arg << "'\n" << usage << "\n";
      std::exit(2);
    }
    flags.values[arg.substr(2)] = argv[i + 1];
  }
  if (!flags.Get("router") || !flags.Get("prompt")) {
    std::cerr << usage << "\n";
    std::exit(2);
  }
  return flags;
}

// The request and client options the common flags describe; exits on a malformed number.
inline GenerateRequest RequestFromFlags(const ExampleFlags& flags, ClientOptions& options) {
  GenerateRequest request = GenerateRequest::FromText(*flags.Get("prompt"));
  auto fail = [](const std::string& name) {
    std::cerr << "--" << name << " is not a number\n";
    std::exit(2);
  };
  if (auto v = flags.Get("max-new-tokens")) {
    int32_t n = 0;
    if (!absl::SimpleAtoi(*v, &n)) fail("max-new-tokens");
    request.sampling.max_new_tokens = n;
  }
  if (auto v = flags.Get("temperature")) {
    float t = 0;
    if (!absl::SimpleAtof(*v, &t)) fail("temperature");
    request.sampling.temperature = t;
  }
  if (auto v = flags.Get("timeout")) {
    double seconds = 0;
    if (!absl::SimpleAtod(*v, &seconds)) fail("timeout");
    options.default_timeout = absl::Seconds(seconds);
  }
  return request;
}

}  // namespace indexcache::client::examples
