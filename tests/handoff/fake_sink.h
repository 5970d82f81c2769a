// A HandoffSink for transport tests: checks each chunk's checksum and sequence like a decode worker
// would, records everything, and lets a test wait for the stream's end. With `land_rows` set it
// lands rows bytes in memory of its own, as a decode worker does (LandRows), and records each rows
// chunk with its landed bytes put back into rows.data.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/handoff/handoff_transport.h"

namespace indexcache::testing {

class FakeSink : public HandoffSink {
 public:
  // kDevice rows land in host memory too (standing for the GPU's, as on the CPU backend), marked
  // as device rows, so the transport must checksum them itself.
  absl::StatusOr<LandedRows> LandRows(const v1::HandoffChunk&, size_t bytes, RowsMemory memory) override {
    if (!land_rows && memory == RowsMemory::kHost) return LandedRows{};
    auto area = std::make_shared<std::string>(bytes, '\0');
    std::lock_guard<std::mutex> lock(mu_);
    ++landed_;
    if (memory == RowsMemory::kDevice) ++landed_on_device_;
    return LandedRows{.data = area->data(), .size = bytes, .keep = area, .memory = memory};
  }
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows rows) override {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status verdict = VerifyChunkChecksum(chunk, rows);
    if (verdict.ok() && !rows.empty() && !chunk.rows().data().empty()) {
      verdict = absl::InvalidArgumentError("rows bytes both landed and in the message");
    }
    if (verdict.ok() && chunk.sequence() != chunks_.size()) {
      verdict = absl::DataLossError(absl::StrFormat("sequence %d, want %d", chunk.sequence(), chunks_.size()));
    }
    if (!verdict.ok()) {
      rejected_ = verdict;
      ended_.notify_all();
      return verdict;
    }
    chunks_.push_back(chunk);
    if (!rows.empty()) chunks_.back().mutable_rows()->set_data(std::string(rows.data, rows.size));
    accepted_.notify_all();
    return absl::OkStatus();
  }
  v1::HandoffAck OnComplete(const std::string& request_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    completed_.push_back(request_id);
    ended_.notify_all();
    return MakeAck(absl::OkStatus());
  }
  void OnBroken(const std::string& request_id, const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(mu_);
    broken_.emplace_back(request_id, why);
    ended_.notify_all();
  }

  // Waits until the stream completed, was rejected or broke; false after 10 s.
  bool WaitForEnd() {
    std::unique_lock<std::mutex> lock(mu_);
    return ended_.wait_for(lock, std::chrono::seconds(10),
                           [&] { return !completed_.empty() || !rejected_.ok() || !broken_.empty(); });
  }

  // Waits (up to 10 s) until `n` chunks were accepted.
  bool WaitForChunks(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return accepted_.wait_for(lock, std::chrono::seconds(10), [&] { return chunks_.size() >= n; });
  }

  std::vector<v1::HandoffChunk> chunks() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }
  std::vector<std::string> completed() {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_;
  }
  std::vector<std::pair<std::string, absl::Status>> broken() {
    std::lock_guard<std::mutex> lock(mu_);
    return broken_;
  }
  absl::Status rejected() {
    std::lock_guard<std::mutex> lock(mu_);
    return rejected_;
  }
  // Rows payloads landed in this sink's memory.
  int landed() {
    std::lock_guard<std::mutex> lock(mu_);
    return landed_;
  }
  int landed_on_device() {
    std::lock_guard<std::mutex> lock(mu_);
    return landed_on_device_;
  }

  bool land_rows = false;  // set before the stream starts

 private:
  std::mutex mu_;
  std::condition_variable ended_;
  std::condition_variable accepted_;
  std::vector<v1::HandoffChunk> chunks_;
  std::vector<std::string> completed_;
  std::vector<std::pair<std::string, absl::Status>> broken_;
  absl::Status rejected_;
  int landed_ = 0;
  int landed_on_device_ = 0;
};

// A sealed handoff of `request_id`: header, rows chunks of the given byte sizes (alternating LATENT
// and INDEX_KEY, random bytes), trailer.
inline std::vector<v1::HandoffChunk> MakeHandoff(const std::string& request_id, const std::vector<size_t>& row_bytes) {
  std::mt19937 rng(7);
  std::vector<v1::HandoffChunk> chunks;
  auto next = [&]() -> v1::HandoffChunk& {
    v1::HandoffChunk& chunk = chunks.emplace_back();
    chunk.set_request_id(request_id);
    chunk.set_sequence(static_cast<uint32_t>(chunks.size() - 1));
    return chunk;
  };
  v1::HandoffHeader* header = next().mutable_header();
  header->set_model_fingerprint("fp");
  header->set_index_pattern("FFSFS");
  header->set_prompt_tokens(7);
  header->set_dtype("f32");
  // Rows widths that hold the largest of `row_bytes` in 7 f32 rows, so the receiver's bound on a rows
  // frame (rows_frame_bound.h) lets every one through; the bytes themselves are arbitrary.
  size_t largest = 0;
  for (size_t bytes : row_bytes) largest = std::max(largest, bytes);
  const int32_t width = static_cast<int32_t>(std::max<size_t>(1, (largest + 27) / 28));
  header->set_latent_dim(width);
  header->set_index_key_dim(width);
  for (size_t i = 0; i < row_bytes.size(); ++i) {
    v1::KvRows* rows = next().mutable_rows();
    rows->set_layer(static_cast<int32_t>(i));
    rows->set_kind(i % 2 == 0 ? v1::LATENT : v1::INDEX_KEY);
    rows->set_num_tokens(7);
    std::string data(row_bytes[i], '\0');
    for (char& c : data) c = static_cast<char>(rng());
    rows->set_data(std::move(data));
  }
  v1::HandoffTrailer* trailer = next().mutable_trailer();
  trailer->set_first_token(42);
  trailer->add_selections()->add_topk(3);
  for (v1::HandoffChunk& chunk : chunks) SealChunk(chunk);
  return chunks;
}

}  // namespace indexcache::testing
