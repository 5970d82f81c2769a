// The fault-injection suite (issue 13, in the manner of NVIDIA Dynamo's tests/fault_tolerance): a
// CPU cluster — a router and two workers of each role, processes of the `indexcache` binary — under a
// steady load of concurrent streams (8 greedy, 2 seeded), while one worker at a time is killed
// (kill -9), stopped (SIGSTOP) or drained (SIGTERM, 0.5 s grace) mid-stream and then started again.
// Asserted in every phase: every stream ends, with its final message, and its tokens are those of the
// undisturbed run of the same requests (run first; its greedy output checked against the in-process
// engine); the streams cut by the fault moved (the router's migration counter); every worker's KV
// blocks are all free again afterwards; and the streams resumed within a bound. The last phase drains
// both decode workers at once: with no worker left to move to, every stream ends OK or UNAVAILABLE
// with a message that says why, and none hangs. The figures go to stdout as a markdown table, and to
// the file $FAULT_SUITE_REPORT when set (bench/results/fault-suite-*.md).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "indexcache/v1/internal.grpc.pb.h"
#include "tests/e2e/divergence.h"
#include "tests/e2e/e2e_common.h"
#include "tests/metrics/http_test_client.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::EngineGreedy;
using e2e::GoldenInput;
using e2e::kBinary;
using e2e::kModel;
using e2e::StartService;
using e2e::WaitForPool;

constexpr int kGreedyStreams = 8;
constexpr int kSeededStreams = 2;
constexpr int32_t kMaxNew = 400;  // prompts of 40-54 tokens: within the model's 512 positions; ~2 s a stream
constexpr int kTokensBeforeFault = 6;  // every stream is past its first token when the fault hits
constexpr char kDrainGrace[] = "0.5";   // the workers' --drain-grace: shorter than a stream
constexpr absl::Duration kStallTimeout = absl::Seconds(4);
constexpr absl::Duration kDeadline = absl::Seconds(120);  // no stream may take it: none hangs
// The longest pause a fault may cause in a stream: the stall timeout (SIGSTOP) plus a re-prefill of up
// to ~450 tokens on two busy cores.
constexpr absl::Duration kRecoveryBound = absl::Seconds(20);

// Distinct prompts (prefixes of the golden's), so that every stream has its own continuation.
std::vector<std::vector<int32_t>> Prompts() {
  const std::vector<int32_t> golden = GoldenInput();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kGreedyStreams + kSeededStreams; ++i) {
    const size_t length = std::min(golden.size(), static_cast<size_t>(40 + (i % kGreedyStreams) * 2));
    prompts.emplace_back(golden.begin(), golden.begin() + static_cast<std::ptrdiff_t>(length));
  }
  return prompts;
}

client::GenerateRequest RequestFor(int i, const std::vector<int32_t>& prompt) {
  client::GenerateRequest request = e2e::Greedy(prompt, kMaxNew);
  if (i >= kGreedyStreams) {  // seeded: the draws must continue across a migration too
    request.sampling.temperature = 0.8f;
    request.sampling.seed = 1000 + i;
  }
  return request;
}

// What one stream delivered.
struct StreamRecord {
  std::vector<int32_t> tokens;
  std::vector<absl::Time> chunk_times;  // of the chunks that carried tokens
  std::optional<client::FinalInfo> final;
  absl::Status status;  // OK: ended with its final message
  bool done = false;
  absl::Time ended;
};

// The steady load: one thread per stream, each reading its stream to the end.
class Load {
 public:
  Load(const client::Client& client, const std::vector<std::vector<int32_t>>& prompts) : records_(prompts.size()) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      threads_.emplace_back([this, &client, i, prompt = prompts[i]] { Read(client, static_cast<int>(i), prompt); });
    }
  }
  ~Load() { Join(); }

  // Waits until every stream has `tokens` tokens or ended; false after `timeout`.
  bool WaitForTokens(int tokens, absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, absl::ToChronoSeconds(timeout), [&] {
      return std::all_of(records_.begin(), records_.end(), [&](const StreamRecord& r) {
        return r.done || static_cast<int>(r.tokens.size()) >= tokens;
      });
    });
  }

  std::vector<StreamRecord> Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return records_;
  }

 private:
  void Read(const client::Client& client, int i, const std::vector<int32_t>& prompt) {
    client::GenerateStream stream = client.Stream(RequestFor(i, prompt));
    for (;;) {
      absl::StatusOr<std::optional<client::GenerateChunk>> chunk = stream.Next();
      std::lock_guard<std::mutex> lock(mu_);
      StreamRecord& r = records_[i];
      if (!chunk.ok() || !chunk->has_value()) {
        r.status = chunk.ok() ? (r.final ? absl::OkStatus() : absl::InternalError("no final message")) : chunk.status();
        r.done = true;
        r.ended = absl::Now();
        changed_.notify_all();
        return;
      }
      if (!(*chunk)->token_ids.empty()) {
        r.tokens.insert(r.tokens.end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
        r.chunk_times.push_back(absl::Now());
      }
      if ((*chunk)->final) r.final = (*chunk)->final;
      changed_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<StreamRecord> records_;  // guarded by mu_
  std::vector<std::thread> threads_;
};

// The longest pause in any stream from `fault` on: between two of its token chunks, or from the fault
// to its first chunk after it. A moved stream pauses from the fault (or the end of the drain grace)
// until its new pair's first token.
absl::Duration Recovery(const std::vector<StreamRecord>& records, absl::Time fault) {
  absl::Duration worst = absl::ZeroDuration();
  for (const StreamRecord& r : records) {
    absl::Time previous = fault;
    for (const absl::Time t : r.chunk_times) {
      if (t <= fault) continue;
      worst = std::max(worst, t - previous);
      previous = t;
    }
  }
  return worst;
}

absl::StatusOr<v1::WorkerLoad> GetLoad(const std::string& address, bool decode) {
  auto channel = e2e::WorkerChannel(address);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::WorkerLoad load;
  const grpc::Status status = decode ? v1::DecodeWorker::NewStub(channel)->GetLoad(&context, {}, &load)
                                     : v1::PrefillWorker::NewStub(channel)->GetLoad(&context, {}, &load);
  if (!status.ok()) return absl::UnavailableError(status.error_message());
  return load;
}

// One row of the suite's table.
struct PhaseFigures {
  std::string phase;
  int streams = 0;
  int ok = 0;
  int ended_with_status = 0;
  int identical = 0;
  int parted_at_tie = 0;  // parted from the undisturbed run at a near-tie (divergence.h)
  double migrations = 0;
  absl::Duration recovery;
  absl::Duration rejoin;  // the restarted worker back in the pool
  bool kv_free = false;
};

class FaultToleranceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    router_ = StartService("router",
                           {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel, "--stall-timeout",
                            std::to_string(absl::ToInt64Seconds(kStallTimeout)), "--metrics-listen", "127.0.0.1:0",
                            "--migration-limit", "3"},
                           &router_address_);
    ASSERT_NE(router_, nullptr);
    router_metrics_ = router_->Announced("metrics");
    ASSERT_FALSE(router_metrics_.empty());
    auto c = e2e::ConnectClient(router_address_, kDeadline);
    ASSERT_TRUE(c.ok()) << c.status();
    client_.emplace(*c);
    for (const char* name : {"prefill-0", "prefill-1", "decode-0", "decode-1"}) ASSERT_TRUE(StartWorker(name));
    ASSERT_TRUE(FullPool());
  }

  void TearDown() override {
    for (auto& [name, worker] : workers_) {
      if (worker != nullptr) worker->Signal(SIGCONT);  // a stopped child cannot take SIGTERM
    }
  }

  static bool IsDecode(const std::string& name) { return name.rfind("decode", 0) == 0; }

  bool StartWorker(const std::string& name) {
    const std::string role = IsDecode(name) ? "decode" : "prefill";
    workers_[name] = StartService(name,
                                  {kBinary, role + "-worker", "--listen", "127.0.0.1:0", "--router",
                                   e2e::InternalAddress(*router_), "--worker-id", name, "--model", kModel, "--threads", "1", "--kv-cache-mb", "16",
                                   "--block-size", "16", "--max-batch-tokens", "64", "--drain-grace", kDrainGrace},
                                  &addresses_[name]);
    return workers_[name] != nullptr;
  }

  bool FullPool() {
    return WaitForPool(*client_, [](int prefill, int decode) { return prefill == 2 && decode == 2; });
  }

  // The workers' processes are gone (killed or drained): reaps them, starts them again under the same
  // ids and returns how long until the router's pool was whole again.
  absl::Duration Restart(const std::vector<std::string>& names) {
    const absl::Time start = absl::Now();
    for (const std::string& name : names) {
      workers_[name]->Stop(absl::Seconds(30));
      EXPECT_TRUE(StartWorker(name));
    }
    EXPECT_TRUE(FullPool()) << "the restarted workers did not rejoin the pool";
    return absl::Now() - start;
  }

  // The decode worker holding the most streams now.
  std::string BusiestDecodeWorker() {
    std::string busiest = "decode-0";
    int most = -1;
    for (const char* name : {"decode-0", "decode-1"}) {
      absl::StatusOr<v1::WorkerLoad> load = GetLoad(addresses_[name], true);
      if (load.ok() && load->running_sequences() > most) {
        most = load->running_sequences();
        busiest = name;
      }
    }
    return busiest;
  }

  // Every worker's KV blocks all free, within 15 s (a resumed SIGSTOPped worker first learns that its
  // calls were cancelled).
  bool AllKvFree() {
    for (int i = 0; i < 300; ++i) {
      bool all = true;
      for (const auto& [name, address] : addresses_) {
        absl::StatusOr<v1::WorkerLoad> load = GetLoad(address, IsDecode(name));
        all = all && load.ok() && load->total_kv_blocks() > 0 && load->free_kv_blocks() == load->total_kv_blocks();
      }
      if (all) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  double Migrations() {
    absl::StatusOr<testing::HttpReply> reply = testing::Get(router_metrics_);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (!reply.ok()) return -1;
    double total = 0;
    for (absl::string_view line : absl::StrSplit(reply->body, '\n')) {
      if (!absl::StartsWith(line, "indexcache_router_migrations_total{")) continue;
      double value = 0;
      EXPECT_TRUE(absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) << line;
      total += value;
    }
    return total;
  }

  // Runs the load; `fault` (null: none) hits once every stream has `tokens_before_fault` tokens (0: as
  // soon as the streams are sent) and returns the fault's time. Checks that every stream ended with its
  // final message and, given `truth`, that its tokens are the truth's.
  std::vector<StreamRecord> RunLoad(const std::string& phase, int tokens_before_fault,
                                    const std::function<absl::Time()>& fault,
                                    const std::vector<std::vector<int32_t>>* truth, PhaseFigures* figures) {
    const double migrations_before = Migrations();
    Load load(*client_, prompts_);
    absl::Time fault_at = absl::InfiniteFuture();
    if (fault) {
      EXPECT_TRUE(load.WaitForTokens(tokens_before_fault, absl::Seconds(60))) << phase << ": the load did not start";
      fault_at = fault();
    }
    std::vector<StreamRecord> records = load.Join();
    figures->phase = phase;
    figures->streams = static_cast<int>(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      const StreamRecord& r = records[i];
      EXPECT_TRUE(r.status.ok()) << phase << ", stream " << i << ": " << r.status;
      if (r.status.ok()) ++figures->ok;
      if (!r.status.ok()) ++figures->ended_with_status;
      if (truth != nullptr) Count(CompareWithTruth(phase, static_cast<int>(i), r.tokens, (*truth)[i]), figures);
      if (r.final) {
        EXPECT_EQ(r.final->generated_tokens, kMaxNew) << phase << ", stream " << i;
        EXPECT_EQ(r.final->prompt_tokens, static_cast<int32_t>(prompts_[i].size())) << phase << ", stream " << i;
      }
    }
    figures->migrations = Migrations() - migrations_before;
    if (fault) {
      figures->recovery = Recovery(records, fault_at);
      EXPECT_LT(figures->recovery, kRecoveryBound) << phase;
    }
    return records;
  }

  enum class Agreement { kIdentical, kPartedAtTie, kDiffers };

  static void Count(Agreement agreement, PhaseFigures* figures) {
    if (agreement == Agreement::kIdentical) ++figures->identical;
    if (agreement == Agreement::kPartedAtTie) ++figures->parted_at_tie;
  }

  // A stream's tokens against the undisturbed run's (`truth`): identical, or parted at a near-tie (said
  // on stdout, with the margin), or a failure that says where and why.
  Agreement CompareWithTruth(const std::string& phase, int i, const std::vector<int32_t>& tokens,
                             const std::vector<int32_t>& truth) {
    if (tokens == truth) return Agreement::kIdentical;
    if (judge_ == nullptr) {
      EngineOptions options;
      options.model_dir = kModel;
      absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
      EXPECT_TRUE(engine.ok()) << engine.status();
      if (!engine.ok()) return Agreement::kDiffers;
      judge_ = *std::move(engine);
    }
    absl::StatusOr<e2e::Divergence> divergence =
        e2e::JudgeDivergence(*judge_, prompts_[i], ToSamplingParams(RequestFor(i, prompts_[i])), truth, tokens);
    EXPECT_TRUE(divergence.ok()) << phase << ", stream " << i << ": " << divergence.status();
    if (!divergence.ok()) return Agreement::kDiffers;
    if (divergence->tie) {
      std::cout << phase << ", stream " << i << ": parted from the undisturbed run at token " << divergence->position
                << ", a near-tie: " << divergence->detail << "\n";
      return Agreement::kPartedAtTie;
    }
    ADD_FAILURE() << phase << ", stream " << i << ": differs from the undisturbed run at token "
                  << divergence->position << ", not a tie: " << divergence->detail;
    return Agreement::kDiffers;
  }

  // The engine's parameters for a request of the SDK (the server's defaults where unset).
  static SamplingParams ToSamplingParams(const client::GenerateRequest& request) {
    const client::SamplingParams& given = request.sampling;
    SamplingParams params;
    params.temperature = given.temperature.value_or(params.temperature);
    params.top_k = given.top_k.value_or(params.top_k);
    params.top_p = given.top_p.value_or(params.top_p);
    params.min_p = given.min_p.value_or(params.min_p);
    params.seed = given.seed;
    return params;
  }

  void Report(const std::vector<PhaseFigures>& phases) {
    std::ostringstream table;
    table << "| phase | streams | completed OK | ended with a status | identical to undisturbed | parted at a near-tie | "
             "migrations | "
             "recovery (s) | worker back in pool (s) | KV blocks all free after |\n"
          << "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (const PhaseFigures& p : phases) {
      table << absl::StrFormat("| %s | %d | %d | %d | %d | %d | %.0f | %.2f | %.2f | %s |\n", p.phase, p.streams,
                               p.ok, p.ended_with_status, p.identical, p.parted_at_tie, p.migrations, absl::ToDoubleSeconds(p.recovery),
                               absl::ToDoubleSeconds(p.rejoin), p.kv_free ? "yes" : "no");
    }
    std::cout << table.str();
    if (const char* path = std::getenv("FAULT_SUITE_REPORT")) std::ofstream(path) << table.str();
  }

  const std::vector<std::vector<int32_t>> prompts_ = Prompts();
  std::unique_ptr<cli::ChildProcess> router_;
  std::string router_address_;
  std::string router_metrics_;
  std::map<std::string, std::unique_ptr<cli::ChildProcess>> workers_;
  std::map<std::string, std::string> addresses_;
  std::optional<client::Client> client_;
  std::unique_ptr<Engine> judge_;  // the in-process engine that judges a divergence, made at the first one
};

TEST_F(FaultToleranceTest, StreamsSurviveEveryRoleKilledStoppedOrDrained) {
  std::vector<PhaseFigures> phases;
  // The undisturbed run is the truth; its greedy output is checked against the in-process engine.
  PhaseFigures undisturbed;
  const std::vector<StreamRecord> baseline = RunLoad("undisturbed", 0, nullptr, nullptr, &undisturbed);
  std::vector<std::vector<int32_t>> truth;
  for (const StreamRecord& r : baseline) truth.push_back(r.tokens);
  ASSERT_EQ(truth[0], EngineGreedy(prompts_[0], kMaxNew));
  undisturbed.identical = undisturbed.ok;
  undisturbed.kv_free = AllKvFree();
  EXPECT_TRUE(undisturbed.kv_free);
  phases.push_back(undisturbed);

  // A decode worker dies mid-stream: its streams move to the other one.
  {
    PhaseFigures figures;
    std::string victim;
    RunLoad("decode worker kill -9", kTokensBeforeFault, [&] {
      victim = BusiestDecodeWorker();
      workers_[victim]->Signal(SIGKILL);
      return absl::Now();
    }, &truth, &figures);
    EXPECT_GT(figures.migrations, 0) << "no stream was on " << victim;
    figures.rejoin = Restart({victim});
    figures.kv_free = AllKvFree();
    EXPECT_TRUE(figures.kv_free);
    phases.push_back(figures);
  }
  // A decode worker stops (SIGSTOP): alive to the kernel, silent to all; the stage timeout moves its
  // streams. Resumed afterwards, it frees what it held and rejoins.
  {
    PhaseFigures figures;
    std::string victim;
    RunLoad("decode worker SIGSTOP", kTokensBeforeFault, [&] {
      victim = BusiestDecodeWorker();
      workers_[victim]->Signal(SIGSTOP);
      return absl::Now();
    }, &truth, &figures);
    EXPECT_GT(figures.migrations, 0) << "no stream was on " << victim;
    const absl::Time resumed = absl::Now();
    workers_[victim]->Signal(SIGCONT);
    EXPECT_TRUE(FullPool());
    figures.rejoin = absl::Now() - resumed;
    figures.kv_free = AllKvFree();
    EXPECT_TRUE(figures.kv_free);
    phases.push_back(figures);
  }
  // A decode worker drains (SIGTERM, 1 s grace): what it cannot finish in time moves.
  {
    PhaseFigures figures;
    std::string victim;
    RunLoad("decode worker SIGTERM (0.5 s drain grace)", kTokensBeforeFault, [&] {
      victim = BusiestDecodeWorker();
      workers_[victim]->Signal(SIGTERM);
      return absl::Now();
    }, &truth, &figures);
    EXPECT_GT(figures.migrations, 0) << "every stream on " << victim << " finished within the grace";
    figures.rejoin = Restart({victim});
    figures.kv_free = AllKvFree();
    EXPECT_TRUE(figures.kv_free);
    phases.push_back(figures);
  }
  // A prefill worker dies as the requests arrive, while it prefills some of them: those are retried
  // on the other one before their first token.
  {
    PhaseFigures figures;
    RunLoad("prefill worker kill -9", 0, [&] {
      workers_["prefill-0"]->Signal(SIGKILL);
      return absl::Now();
    }, &truth, &figures);
    figures.rejoin = Restart({"prefill-0"});
    figures.kv_free = AllKvFree();
    EXPECT_TRUE(figures.kv_free);
    phases.push_back(figures);
  }
  // Both decode workers drain at once (what `cluster up` does on SIGTERM): nowhere to move, so a
  // stream still running after the grace ends UNAVAILABLE saying why; none hangs, none is cut silently.
  {
    PhaseFigures figures;
    figures.phase = "both decode workers SIGTERM (0.5 s drain grace)";
    Load load(*client_, prompts_);
    ASSERT_TRUE(load.WaitForTokens(kTokensBeforeFault, absl::Seconds(60)));
    const absl::Time fault = absl::Now();
    for (const char* name : {"decode-0", "decode-1"}) workers_[name]->Signal(SIGTERM);
    const std::vector<StreamRecord> records = load.Join();
    figures.streams = static_cast<int>(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      const StreamRecord& r = records[i];
      // What reached the client is the truth's beginning (all of it when the stream finished), unless
      // the two parted at a near-tie.
      const std::vector<int32_t> expected =
          r.status.ok() ? truth[i]
                        : std::vector<int32_t>(truth[i].begin(),
                                               truth[i].begin() + std::min(r.tokens.size(), truth[i].size()));
      const Agreement agreement = CompareWithTruth(figures.phase, static_cast<int>(i), r.tokens, expected);
      if (r.status.ok()) {
        ++figures.ok;
        Count(agreement, &figures);
        continue;
      }
      ++figures.ended_with_status;
      EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
      EXPECT_NE(r.status.message().find("drain grace"), std::string::npos) << r.status;
      EXPECT_NE(r.status.message().find("tokens had been streamed"), std::string::npos) << r.status;
    }
    // Here the recovery column is the time until every stream had ended.
    for (const StreamRecord& r : records) figures.recovery = std::max(figures.recovery, r.ended - fault);
    EXPECT_LT(figures.recovery, absl::Seconds(15)) << "the streams outlived the 0.5 s grace by far";
    figures.rejoin = Restart({"decode-0", "decode-1"});
    figures.kv_free = AllKvFree();
    EXPECT_TRUE(figures.kv_free);
    phases.push_back(figures);
  }
  Report(phases);
}

}  // namespace
}  // namespace indexcache
