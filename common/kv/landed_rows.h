// Cache rows on their way into the pools (the handoff's receiving side): where they landed — host
// memory, or device memory when a transport receives straight onto the GPU (NCCL) — with what keeps
// that memory alive until the pool copy has read it: the import's copy holds `keep` and drops it once
// done (Backend::UploadRows), so the bytes are never copied again to outlive the call that received
// them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

namespace indexcache {

// Where rows lie: host memory (pinned on CUDA), or the backend's device memory (Backend::Allocate,
// which on the CPU backend is host memory too).
enum class RowsMemory : uint8_t { kHost, kDevice };

struct LandedRows {
  // (Every member has a brace initializer, so designated initializers may leave any of them out.)
  char* data{nullptr};
  size_t size{0};
  // Owns the memory (a LandingArea range, or a received message's bytes). Null: the memory belongs to
  // the caller, which keeps it valid until the call it is passed to returns.
  std::shared_ptr<const void> keep{};
  RowsMemory memory{RowsMemory::kHost};
  // CRC-32 of the bytes, computed where they lie by the transport that received them: device rows
  // cannot be read by the host, so their chunk's checksum is checked against this.
  std::optional<uint32_t> crc{};

  bool empty() const { return data == nullptr; }
  bool on_device() const { return memory == RowsMemory::kDevice; }
  // The bytes, for host rows only.
  std::string_view view() const { return {data, size}; }
};

}  // namespace indexcache
