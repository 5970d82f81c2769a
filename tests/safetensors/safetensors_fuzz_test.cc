// Deterministic mutation testing of SafetensorsFile::Open: corrupt headers must give an error
// status, never a crash, and whatever is accepted must lie inside the file.
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "common/safetensors/safetensors_file.h"
#include "common/safetensors/safetensors_writer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/safetensors/test_files.h"

namespace indexcache {
namespace {

using ::indexcache::testing::AssembleFile;
using ::indexcache::testing::MakeTempDir;
using ::indexcache::testing::ReadBytes;
using ::indexcache::testing::WriteBytes;
using Json = nlohmann::json;

struct Outcome {
  int ok = 0;
  int rejected = 0;
  uint64_t checksum = 0;  // of every accepted tensor byte, so the reads cannot be optimized away
};

// Opens `bytes` as a file. An accepted file must hand out only views that are inside its data
// section, sized by their shape, and disjoint; every byte of them is read (a stray view would
// fault or trip a sanitizer). A rejection must carry a message.
void Check(const std::string& path, const std::string& bytes, Outcome* outcome, const std::string& what) {
  WriteBytes(path, bytes);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    ++outcome->rejected;
    EXPECT_FALSE(file.status().message().empty()) << what;
    return;
  }
  ++outcome->ok;
  const std::byte* begin = file->data_section().data();
  const std::byte* end = begin + file->data_section().size();
  EXPECT_LE(file->data_section().size(), bytes.size() - 8) << what;
  std::vector<std::pair<const std::byte*, size_t>> ranges;
  for (const std::string& name : file->Names()) {
    const TensorView* t = file->Find(name);
    ASSERT_NE(t, nullptr) << what;
    uint64_t elements = 1;
    for (int64_t d : t->shape) {
      ASSERT_GE(d, 0) << what;
      elements *= static_cast<uint64_t>(d);
    }
    EXPECT_EQ(t->nbytes, elements * StDTypeSize(t->dtype)) << what << " tensor " << name;
    ASSERT_GE(t->data, begin) << what << " tensor " << name;
    ASSERT_LE(t->nbytes, static_cast<size_t>(end - t->data)) << what << " tensor " << name;
    for (size_t i = 0; i < t->nbytes; ++i) outcome->checksum += static_cast<uint64_t>(t->data[i]);
    if (t->nbytes > 0) ranges.emplace_back(t->data, t->nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    EXPECT_LE(ranges[i - 1].first + ranges[i - 1].second, ranges[i].first) << what << " overlap";
  }
}

// A valid file with several dtypes, metadata and a zero-sized tensor.
std::string BaseFile(const std::string& dir) {
  const std::string path = dir + "/base.safetensors";
  std::vector<TensorToWrite> tensors = {
      {"attn.w", StDType::kBF16, {2, 3}, std::vector<std::byte>(12, std::byte{0x3F})},
      {"embed", StDType::kF32, {4}, std::vector<std::byte>(16, std::byte{0x11})},
      {"ids", StDType::kI64, {1}, std::vector<std::byte>(8, std::byte{0x7})},
      {"mask", StDType::kBool, {3}, std::vector<std::byte>(3, std::byte{1})},
      {"none", StDType::kF16, {0}, {}},
  };
  EXPECT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  return ReadBytes(path);
}

uint64_t HeaderSize(const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  return n;
}

TEST(SafetensorsFuzzTest, EveryTruncation) {
  const std::string dir = MakeTempDir();
  const std::string base = BaseFile(dir);
  Outcome outcome;
  for (size_t len = 0; len < base.size(); ++len) {
    Check(dir + "/t.safetensors", base.substr(0, len), &outcome, "truncated to " + std::to_string(len));
  }
  // Cutting into the data section drops the last tensor's bytes: all truncations must be refused.
  EXPECT_EQ(outcome.ok, 0);
  EXPECT_EQ(outcome.rejected, static_cast<int>(base.size()));
}

TEST(SafetensorsFuzzTest, BitFlipsAndByteRewrites) {
  const std::string dir = MakeTempDir();
  const std::string base = BaseFile(dir);
  const size_t prefix = 8 + HeaderSize(base);
  Outcome outcome;
  // Every single-bit flip of the length field and the header.
  for (size_t pos = 0; pos < prefix; ++pos) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string m = base;
      m[pos] = static_cast<char>(m[pos] ^ (1 << bit));
      Check(dir + "/f.safetensors", m, &outcome, "flip byte " + std::to_string(pos) + " bit " + std::to_string(bit));
    }
  }
  // Random rewrites of 1-4 header bytes with JSON-significant characters.
  const std::string alphabet = "{}[]\",:0123456789-.eE \\ntfalsenull\x00\xff";
  std::mt19937 rng(20260101);
  for (int i = 0; i < 3000; ++i) {
    std::string m = base;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n; ++k) m[8 + rng() % (prefix - 8)] = alphabet[rng() % alphabet.size()];
    Check(dir + "/r.safetensors", m, &outcome, "rewrite " + std::to_string(i));
  }
  RecordProperty("accepted", outcome.ok);
  RecordProperty("rejected", outcome.rejected);
  EXPECT_GT(outcome.rejected, 0);
  EXPECT_GT(outcome.ok, 0);  // e.g. flips inside metadata strings keep the file valid
}

TEST(SafetensorsFuzzTest, DeepNestingAndHugeHeaders) {
  const std::string dir = MakeTempDir();
  Outcome outcome;
  const int kDepth = 200000;  // deep enough to overflow the stack of a recursive parser or destructor
  Check(dir + "/n.safetensors", AssembleFile(std::string(kDepth, '[') + std::string(kDepth, ']'), ""),
        &outcome, "nested arrays");
  Check(dir + "/n.safetensors",
        AssembleFile("{\"w\":" + std::string(kDepth, '[') + std::string(kDepth, ']') + "}", ""), &outcome,
        "nested entry");
  Check(dir + "/n.safetensors", AssembleFile("{\"w\":" + std::string(kDepth, '['), ""), &outcome, "unclosed");
  // 2 MB of header: long names and a long dims list, all still consistent.
  Json header = Json::object();
  header[std::string(1 << 20, 'n')] = {{"dtype", "U8"}, {"shape", Json::array({1})}, {"data_offsets", {0, 1}}};
  header["many_dims"] = {{"dtype", "U8"}, {"shape", Json(std::vector<int>(100000, 1))}, {"data_offsets", {1, 2}}};
  Check(dir + "/n.safetensors", AssembleFile(header.dump(), "ab"), &outcome, "long header");
  EXPECT_EQ(outcome.rejected, 3);
  EXPECT_EQ(outcome.ok, 1);
}

// Values that tend to break size arithmetic: around 2^31, 2^32, 2^53, 2^63, 2^64, plus non-integers.
Json Interesting(std::mt19937& rng, uint64_t data_size) {
  const Json kValues[] = {0, 1, 2, 3, 4, 8, 12, -1, -8, data_size, data_size - 1, data_size + 1,
                          int64_t{1} << 31, uint64_t{1} << 32, (uint64_t{1} << 32) + 1, uint64_t{1} << 53,
                          INT64_MAX, uint64_t{1} << 63, UINT64_MAX, 1e30, 1.5, -0.0, "3", nullptr,
                          Json::array(), Json::object(), true};
  return kValues[rng() % std::size(kValues)];
}

void MutateJson(Json& header, std::mt19937& rng, uint64_t data_size) {
  std::vector<std::string> names;
  for (const auto& [name, entry] : header.items()) names.push_back(name);
  const std::string name = names.empty() ? "x" : names[rng() % names.size()];
  Json& entry = header[name];
  // Field edits need an object with array fields (nlohmann throws on indexing anything else).
  if (!entry.is_object()) entry = Json::object();
  for (const char* key : {"shape", "data_offsets"}) {
    if (entry.contains(key) && !entry[key].is_array()) entry[key] = Json::array({0, 0});
  }
  const char* kDtypes[] = {"F32", "BF16", "F16", "F64", "I64", "I8", "U8", "BOOL", "X", "", "f32", "F8_E4M3"};
  switch (rng() % 11) {
    case 10: {
      // Keep only this entry, so that a later edit can place it anywhere without overlapping.
      Json kept = entry;
      header = Json::object();
      header[name] = std::move(kept);
      break;
    }
    case 0:
      entry["data_offsets"][rng() % 2] = Interesting(rng, data_size);
      break;
    case 1:
      entry["data_offsets"] = Json::array({Interesting(rng, data_size), Interesting(rng, data_size)});
      break;
    case 2:
      if (entry.contains("shape") && entry["shape"].is_array() && !entry["shape"].empty()) {
        entry["shape"][rng() % entry["shape"].size()] = Interesting(rng, data_size);
      } else {
        entry["shape"] = Json::array({Interesting(rng, data_size)});
      }
      break;
    case 3:
      entry["shape"].push_back(Interesting(rng, data_size));
      break;
    case 4:
      entry["dtype"] = kDtypes[rng() % std::size(kDtypes)];
      break;
    case 5: {
      const char* kKeys[] = {"dtype", "shape", "data_offsets"};
      if (entry.is_object()) entry.erase(kKeys[rng() % 3]);
      break;
    }
    case 6:
      entry = Interesting(rng, data_size);
      break;
    case 7:
      header["new" + std::to_string(rng() % 100)] = {
          {"dtype", kDtypes[rng() % std::size(kDtypes)]},
          {"shape", Json::array({Interesting(rng, data_size)})},
          {"data_offsets", Json::array({Interesting(rng, data_size), Interesting(rng, data_size)})}};
      break;
    case 8:
      header["__metadata__"] = rng() % 2 ? Interesting(rng, data_size) : Json{{"k", Interesting(rng, data_size)}};
      break;
    default:
      // A shape and offsets that agree with each other, anywhere in (or past) the data section.
      entry = {{"dtype", "U8"},
               {"shape", Json::array({rng() % 40})},
               {"data_offsets", Json::array({0, 0})}};
      entry["data_offsets"][0] = rng() % (data_size + 8);
      entry["data_offsets"][1] = entry["data_offsets"][0].get<uint64_t>() + entry["shape"][0].get<uint64_t>();
      break;
  }
}

TEST(SafetensorsFuzzTest, StructuredJsonEdits) {
  const std::string dir = MakeTempDir();
  const std::string base = BaseFile(dir);
  const uint64_t header_size = HeaderSize(base);
  const Json header = Json::parse(base.substr(8, header_size));
  const std::string data = base.substr(8 + header_size);
  std::mt19937 rng(7);
  Outcome outcome;
  for (int i = 0; i < 4000; ++i) {
    Json m = header;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) MutateJson(m, rng, data.size());
    std::string d = data;
    if (rng() % 8 == 0) d.resize(rng() % (data.size() + 16), 'z');  // shrink or grow the data section
    std::string bytes = AssembleFile(m.dump(), d);
    if (rng() % 16 == 0) {
      // Lie in the length field while keeping the JSON.
      const uint64_t lies[] = {0, 1, header_size - 1, header_size + 1, bytes.size(), UINT64_MAX,
                               100'000'000, 100'000'001};
      const uint64_t n = lies[rng() % std::size(lies)];
      for (int b = 0; b < 8; ++b) bytes[b] = static_cast<char>((n >> (8 * b)) & 0xFF);
    }
    Check(dir + "/j.safetensors", bytes, &outcome, "edit " + std::to_string(i) + ": " + m.dump());
  }
  RecordProperty("accepted", outcome.ok);
  RecordProperty("rejected", outcome.rejected);
  EXPECT_GT(outcome.rejected, 1000);
  EXPECT_GT(outcome.ok, 100);
}

}  // namespace
}  // namespace indexcache
