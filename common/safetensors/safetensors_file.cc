#include "common/safetensors/safetensors_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

using Json = nlohmann::json;

// The bound of the reference (Rust) implementation: a real header, even with tens of thousands of
// tensors, is a few MB; a larger length field is corruption, and parsing it would only burn memory.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthFieldBytes = 8;

// (Debian's absl::string_view is its own type: std::string_view must be converted for StrCat.)
std::string Quoted(std::string_view s) { return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\""); }

// An untrusted JSON value as it may appear in an error message: scalars as written (cut short),
// containers by kind and size. dump() of a container would recurse once per nesting level (a
// crafted header overflows the stack) and could copy megabytes into a message.
std::string Describe(const Json& value) {
  if (value.is_array()) return absl::StrCat("an array of ", value.size(), " elements");
  if (value.is_object()) return absl::StrCat("an object of ", value.size(), " keys");
  std::string text = value.dump();
  if (text.size() > 64) text = text.substr(0, 60) + "...";
  return text;
}

// A JSON value that must be a non-negative integer fitting in int64 (a dim or an offset).
absl::StatusOr<uint64_t> NonNegativeInt(const Json& value, const char* what) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", v, " is too large"));
    }
    return v;
  }
  if (value.is_number_integer()) {  // nlohmann stores only negative integers as signed
    return absl::InvalidArgumentError(absl::StrCat(what, " ", value.get<int64_t>(), " is negative"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " must be a non-negative integer, got ", Describe(value)));
}

// Validates one header entry and points `out` into the data section [data, data + data_size).
absl::Status ParseEntry(const std::string& name, const Json& entry, const std::byte* data,
                        uint64_t data_size, TensorView* out) {
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("entry must be an object, got ", Describe(entry)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return absl::InvalidArgumentError(absl::StrCat("missing \"", key, "\""));
  }
  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("dtype must be a string, got ", Describe(dtype)));
  }
  ASSIGN_OR_RETURN(out->dtype, ParseStDType(dtype.get_ref<const std::string&>()));

  const Json& shape = entry["shape"];
  if (!shape.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("shape must be an array, got ", Describe(shape)));
  }
  // Element count in u64 with overflow checks: a hostile shape like [2^40, 2^40] must not wrap
  // around to a small number that happens to match the offsets.
  uint64_t expected_bytes = StDTypeSize(out->dtype);
  bool overflow = false;
  out->shape.clear();
  for (const Json& dim : shape) {
    ASSIGN_OR_RETURN(const uint64_t d, NonNegativeInt(dim, "shape dim"));
    out->shape.push_back(static_cast<int64_t>(d));
    overflow = overflow || __builtin_mul_overflow(expected_bytes, d, &expected_bytes);
  }
  if (overflow) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeToString(out->shape), " overflows 64 bits"));
  }

  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("data_offsets must be [begin, end], got ", Describe(offsets)));
  }
  ASSIGN_OR_RETURN(const uint64_t begin, NonNegativeInt(offsets[0], "data_offsets begin"));
  ASSIGN_OR_RETURN(const uint64_t end, NonNegativeInt(offsets[1], "data_offsets end"));
  if (begin > end) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets begin ", begin, " > end ", end));
  }
  if (end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets end ", end,
                                                   " is beyond the data section (", data_size, " bytes)"));
  }
  if (end - begin != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but shape ", ShapeToString(out->shape),
        " of ", std::string(StDTypeName(out->dtype)), " needs ", expected_bytes));
  }
  out->name = name;
  out->data = data + begin;
  out->nbytes = static_cast<size_t>(expected_bytes);
  return absl::OkStatus();
}

absl::Status ParseMetadata(const Json& value, std::map<std::string, std::string>* metadata) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("__metadata__ must be an object of strings, got ", Describe(value)));
  }
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("__metadata__[", Quoted(key), "] must be a string, got ", Describe(v)));
    }
    (*metadata)[key] = v.get<std::string>();
  }
  return absl::OkStatus();
}

// Two tensors sharing bytes means a corrupt header (or one crafted to alias weights).
absl::Status CheckNoOverlap(const std::vector<TensorView>& tensors) {
  std::vector<const TensorView*> order;
  for (const TensorView& t : tensors) {
    if (t.nbytes > 0) order.push_back(&t);
  }
  std::sort(order.begin(), order.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i - 1]->data + order[i - 1]->nbytes > order[i]->data) {
      return absl::InvalidArgumentError(absl::StrCat("tensors ", Quoted(order[i - 1]->name), " and ",
                                                     Quoted(order[i]->name), " overlap"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  const std::string context = absl::StrCat("safetensors file ", Quoted(path));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat(context, ": cannot open: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat(context, ": fstat failed: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(context, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kLengthFieldBytes) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(context, ": file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(context, ": mmap failed: ", std::strerror(map_errno)));
  }
  SafetensorsFile file;  // from here on its destructor unmaps, on every return path
  file.path_ = path;
  file.mapping_ = mapping;
  file.mapping_size_ = file_size;
  const auto* bytes = static_cast<const std::byte*>(mapping);

  uint64_t header_size;
  std::memcpy(&header_size, bytes, sizeof(header_size));  // little-endian host (see dtype.cc)
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(context, ": header length ", header_size, " exceeds the ", kMaxHeaderBytes, "-byte limit"));
  }
  if (header_size > file_size - kLengthFieldBytes) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": header length ", header_size,
                                                   " runs past the end of the ", file_size, "-byte file"));
  }
  const auto* header_begin = reinterpret_cast<const char*>(bytes + kLengthFieldBytes);
  file.data_section_ = absl::Span<const std::byte>(bytes + kLengthFieldBytes + header_size,
                                                   file_size - kLengthFieldBytes - header_size);

  // nlohmann keeps only the last of repeated keys; a repeated tensor name is caught while parsing.
  std::unordered_set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  const Json header = Json::parse(header_begin, header_begin + header_size, on_event,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": header is not valid JSON"));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": header is not a JSON object"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(context, ": header lists ", Quoted(duplicate), " more than once"));
  }

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      RETURN_IF_ERROR(Annotate(ParseMetadata(entry, &file.metadata_), context));
      continue;
    }
    TensorView view;
    RETURN_IF_ERROR(Annotate(ParseEntry(name, entry, file.data_section_.data(), file.data_section_.size(), &view),
                             absl::StrCat(context, ": tensor ", Quoted(name))));
    file.tensors_.push_back(std::move(view));
  }
  RETURN_IF_ERROR(Annotate(CheckNoOverlap(file.tensors_), context));

  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.by_name_[file.tensors_[i].name] = i;
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    data_section_ = std::exchange(other.data_section_, {});
    tensors_ = std::move(other.tensors_);
    by_name_ = std::move(other.by_name_);
    metadata_ = std::move(other.metadata_);
    other.tensors_.clear();
    other.by_name_.clear();
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  const auto it = by_name_.find(absl::string_view(name.data(), name.size()));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const TensorView& t : tensors_) names.push_back(t.name);  // tensors_ is sorted by name
  return names;
}

}  // namespace indexcache
