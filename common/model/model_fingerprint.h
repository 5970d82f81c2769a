// A short identity of a checkpoint, compared across the prefill → decode handoff: a decode worker
// serving a different model must refuse another model's cache. FNV-1a (64-bit) over config.json's
// bytes and, per tensor in name order, its name, dtype, shape and its first and last 64 bytes — cheap
// for any checkpoint size, and different for a retrained model of the same shape.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace indexcache {

class WeightStore;

// 16 hex digits.
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir, const WeightStore& store);

}  // namespace indexcache
