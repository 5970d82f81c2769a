#include "common/model/model_fingerprint.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "common/safetensors/weight_store.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

class Fnv1a {
 public:
  void Add(const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      hash_ ^= bytes[i];
      hash_ *= 0x100000001b3ull;
    }
  }
  void Add(const std::string& s) { Add(s.data(), s.size() + 1); }  // with the terminator: "ab"+"c" != "a"+"bc"
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ull;
};

}  // namespace

absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir, const WeightStore& store) {
  std::ifstream in(model_dir + "/config.json", std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", model_dir, "/config.json"));
  std::stringstream config;
  config << in.rdbuf();
  Fnv1a hash;
  hash.Add(config.str());
  for (const std::string& name : store.Names()) {
    ASSIGN_OR_RETURN(const TensorView* t, store.Get(name));
    hash.Add(name);
    hash.Add(&t->dtype, sizeof(t->dtype));
    hash.Add(t->shape.data(), t->shape.size() * sizeof(int64_t));
    const size_t edge = std::min<size_t>(64, t->nbytes);
    hash.Add(t->data, edge);
    hash.Add(t->data + t->nbytes - edge, edge);
  }
  return absl::StrFormat("%016x", hash.value());
}

}  // namespace indexcache
