// MeteredHandoffSink: what reaches the wrapped sink is counted under the sink's transport — bytes by
// payload per chunk, a completed handoff's latency, and each way a handoff can fail.
#include "services/decode_worker/metered_handoff_sink.h"

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/metrics/registry_sample.h"

namespace indexcache {
namespace {

using ::indexcache::testing::Sample;

// Accepts or refuses chunks and verdicts as told; records what it was called with.
class ScriptedSink : public HandoffSink {
 public:
  absl::Status OnChunk(v1::HandoffChunk& chunk, LandedRows /*rows: never landed*/) override {
    ++chunks;
    return chunk_verdict;
  }
  v1::HandoffAck OnComplete(const std::string&) override { return MakeAck(final_verdict); }
  void OnBroken(const std::string&, const absl::Status&) override { ++broken; }

  absl::Status chunk_verdict;
  absl::Status final_verdict;
  int chunks = 0;
  int broken = 0;
};

v1::HandoffChunk Rows(const std::string& id, v1::KvPayloadKind kind, size_t bytes) {
  v1::HandoffChunk chunk;
  chunk.set_request_id(id);
  chunk.mutable_rows()->set_kind(kind);
  chunk.mutable_rows()->set_data(std::string(bytes, 'x'));
  return chunk;
}

prometheus::Labels Grpc(std::initializer_list<std::pair<const std::string, std::string>> more) {
  prometheus::Labels labels(more);
  labels.emplace("role", "decode");
  labels.emplace("transport", "grpc");
  return labels;
}

class MeteredHandoffSinkTest : public ::testing::Test {
 protected:
  WorkerMetrics metrics_{v1::DECODE, /*full_layers=*/1, /*shared_layers=*/3};
  ScriptedSink inner_;
  std::set<std::string> gone_;  // requests that no longer wait for their handoff
  MeteredHandoffSink sink_{inner_, metrics_, v1::HANDOFF_TRANSPORT_GRPC,
                           [this](const std::string& id) { return !gone_.contains(id); }};
};

TEST_F(MeteredHandoffSinkTest, CountsBytesOfEveryChunkAndTheCompletedHandoff) {
  v1::HandoffChunk header;
  header.set_request_id("r1");
  header.mutable_header()->set_prompt_tokens(4);
  v1::HandoffChunk latent = Rows("r1", v1::LATENT, 1000);
  v1::HandoffChunk keys = Rows("r1", v1::INDEX_KEY, 200);
  // The serialized sizes before the sink sees the chunks (a sink may move the rows out).
  const double serialized = header.ByteSizeLong() + latent.ByteSizeLong() + keys.ByteSizeLong();
  v1::HandoffChunk* stream[] = {&header, &latent, &keys};
  for (v1::HandoffChunk* chunk : stream) ASSERT_TRUE(sink_.OnChunk(*chunk, {}).ok());
  EXPECT_TRUE(sink_.OnComplete("r1").accepted());
  EXPECT_EQ(inner_.chunks, 3);

  const prometheus::Registry& r = *metrics_.registry();
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", Grpc({{"payload", "kv"}})), 1000);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", Grpc({{"payload", "index_keys"}})), 200);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", Grpc({{"payload", "metadata"}})), serialized - 1200);
  EXPECT_EQ(Sample(r, "indexcache_index_key_bytes_not_sent_total", {{"role", "decode"}}), 600);  // 3 Shared layers
  double bytes_per_second = 0;
  EXPECT_EQ(Sample(r, "indexcache_handoff_duration_seconds", Grpc({})), 1);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bandwidth_bytes_per_second", Grpc({}), &bytes_per_second), 1);
  EXPECT_GT(bytes_per_second, 0);
  for (const char* reason : {"data_loss", "unavailable", "rejected"}) {
    EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", Grpc({{"reason", reason}})), 0) << reason;
  }
}

// A request its caller cancelled (or whose deadline passed, or that was aborted) no longer waits for
// its handoff: the stream breaking or being refused then is the request's end, not a failure.
TEST_F(MeteredHandoffSinkTest, HandoffsOfRequestsThatEndedAreNoFailures) {
  v1::HandoffChunk r1 = Rows("r1", v1::LATENT, 10), r2 = Rows("r2", v1::LATENT, 10), r3 = Rows("r3", v1::LATENT, 10);
  ASSERT_TRUE(sink_.OnChunk(r1, {}).ok());
  ASSERT_TRUE(sink_.OnChunk(r2, {}).ok());
  ASSERT_TRUE(sink_.OnChunk(r3, {}).ok());
  gone_ = {"r1", "r2", "r3"};
  sink_.OnBroken("r1", absl::CancelledError("cancelled by its sender"));
  inner_.final_verdict = absl::NotFoundError("request 'r2' ended before its handoff completed");
  EXPECT_FALSE(sink_.OnComplete("r2").accepted());
  inner_.chunk_verdict = absl::NotFoundError("no request r3");
  EXPECT_FALSE(sink_.OnChunk(r3, {}).ok());

  const prometheus::Registry& r = *metrics_.registry();
  for (const char* reason : {"data_loss", "rejected", "unavailable"}) {
    EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", Grpc({{"reason", reason}})), 0) << reason;
  }
}

TEST_F(MeteredHandoffSinkTest, CountsEachWayAHandoffFails) {
  v1::HandoffChunk r1 = Rows("r1", v1::LATENT, 10), r2 = Rows("r2", v1::LATENT, 10), r3 = Rows("r3", v1::LATENT, 10);
  inner_.chunk_verdict = absl::DataLossError("checksum mismatch");
  EXPECT_FALSE(sink_.OnChunk(r1, {}).ok());
  inner_.chunk_verdict = absl::OkStatus();
  inner_.final_verdict = absl::FailedPreconditionError("another pattern");
  ASSERT_TRUE(sink_.OnChunk(r2, {}).ok());
  EXPECT_FALSE(sink_.OnComplete("r2").accepted());
  ASSERT_TRUE(sink_.OnChunk(r3, {}).ok());
  sink_.OnBroken("r3", absl::CancelledError("peer went away"));
  // A connection that broke before any chunk named a request is no handoff.
  sink_.OnBroken("", absl::UnavailableError("closed"));
  EXPECT_EQ(inner_.broken, 2) << "every call still reaches the wrapped sink";

  const prometheus::Registry& r = *metrics_.registry();
  EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", Grpc({{"reason", "data_loss"}})), 1);
  EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", Grpc({{"reason", "rejected"}})), 1);
  EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", Grpc({{"reason", "unavailable"}})), 1);
  EXPECT_EQ(Sample(r, "indexcache_handoff_duration_seconds", Grpc({})), 0) << "no handoff completed";
}

}  // namespace
}  // namespace indexcache
