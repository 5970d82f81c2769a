// Command-line flags of one subcommand: `--name value`, `--name=value` and bare `--switch`. Every
// flag must be declared by the subcommand, so a typo is an error rather than silently ignored.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace indexcache::cli {

class Args {
 public:
  // `valued`: flags that take a value; `switches`: flags that do not.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv, const std::set<std::string>& valued,
                                    const std::set<std::string>& switches);

  bool Has(const std::string& name) const { return values_.contains(name); }
  std::optional<std::string> Get(const std::string& name) const;
  absl::StatusOr<std::string> Require(const std::string& name) const;
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name) const;
  absl::StatusOr<std::optional<double>> GetDouble(const std::string& name) const;
  // Every value given for a repeatable flag, in order.
  std::vector<std::string> GetAll(const std::string& name) const;

 private:
  std::multimap<std::string, std::string> values_;
};

}  // namespace indexcache::cli
