#include "common/safetensors/safetensors_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

using Json = nlohmann::json;

// (Debian's absl::string_view is its own type: std::string_view must be converted for StrCat.)
std::string Quoted(std::string_view s) { return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\""); }

absl::Status CheckTensor(const TensorToWrite& t) {
  if (t.name.empty() || t.name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name ", Quoted(t.name)));
  }
  uint64_t bytes = StDTypeSize(t.dtype);
  for (const int64_t d : t.shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(t.name), " has negative dim ", d));
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(t.name), " shape overflows 64 bits"));
    }
  }
  if (bytes != t.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(t.name), " has ", t.bytes.size(),
                                                   " bytes, its shape and dtype need ", bytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorToWrite> MakeTensorFromF32(std::string name, std::vector<int64_t> shape,
                                                absl::Span<const float> values, StDType dtype) {
  uint64_t count = 1;
  for (const int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(count, static_cast<uint64_t>(d), &count)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " has invalid shape"));
    }
  }
  if (count != values.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), ": ", values.size(),
                                                   " values for a shape of ", count, " elements"));
  }
  TensorToWrite t{std::move(name), dtype, std::move(shape), {}};
  if (dtype == StDType::kF32) {
    t.bytes.resize(values.size() * sizeof(float));
    if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  } else if (dtype == StDType::kBF16) {
    t.bytes.resize(values.size() * sizeof(uint16_t));
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t bits = F32ToBf16(values[i]);
      std::memcpy(t.bytes.data() + 2 * i, &bits, sizeof(bits));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", Quoted(t.name), ": cannot encode floats as ", std::string(StDTypeName(dtype))));
  }
  return t;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) {
    absl::Status status = CheckTensor(t);
    if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat("writing ", Quoted(path), ": ", status.message()));
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return a->name < b->name; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i]->name == order[i - 1]->name) {
      return absl::InvalidArgumentError(
          absl::StrCat("writing ", Quoted(path), ": tensor ", Quoted(order[i]->name), " given twice"));
    }
  }

  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    header[t->name] = {{"dtype", std::string(StDTypeName(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string header_text = header.dump();
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');  // the format pads with spaces
  const uint64_t header_size = header_text.size();              // written little-endian (host order)

  const std::string temp_path = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
    if (!out) return absl::UnavailableError(absl::StrCat("cannot create ", Quoted(temp_path)));
    out.write(reinterpret_cast<const char*>(&header_size), sizeof(header_size));
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const TensorToWrite* t : order) {
      out.write(reinterpret_cast<const char*>(t->bytes.data()), static_cast<std::streamsize>(t->bytes.size()));
    }
    out.close();
    if (out.fail()) {
      std::remove(temp_path.c_str());
      return absl::UnavailableError(absl::StrCat("writing ", Quoted(temp_path), " failed"));
    }
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(temp_path.c_str());
    return absl::UnavailableError(
        absl::StrCat("renaming ", Quoted(temp_path), " to ", Quoted(path), ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace indexcache
