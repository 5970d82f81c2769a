// Cache rows in host memory on their way into the pools (the handoff's receiving side), with what
// keeps that memory alive until the device copy has read it: the import's copy holds `keep` and drops
// it once done (Backend::UploadRows), so the bytes are never copied again on the host to outlive the
// call that received them.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

namespace indexcache {

struct HostRows {
  char* data = nullptr;
  size_t size = 0;
  // Owns the memory (a HostRowsPool area, or a received message's bytes). Null: the memory belongs to
  // the caller, which keeps it valid until the call it is passed to returns.
  std::shared_ptr<const void> keep;

  bool empty() const { return data == nullptr; }
  std::string_view view() const { return {data, size}; }
};

}  // namespace indexcache
