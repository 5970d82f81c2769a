// `cluster up` as a supervisor, and one process per port. Truths come from the kernel: /proc says
// which processes are children of whom, what they run and whether they still live (a zombie is
// dead); exit statuses; and a request's greedy tokens against the in-process engine's.
#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "indexcache/client.h"
#include "tests/e2e/e2e_common.h"
#include "tools/indexcache/child_process.h"

namespace indexcache {
namespace {

using e2e::EngineGreedy;
using e2e::GoldenInput;
using e2e::Greedy;
using e2e::kBinary;
using e2e::kModel;
using e2e::StartService;
using e2e::WaitForPool;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The fields of /proc/PID/stat after the command name: [0] state, [1] parent pid. Empty when gone.
std::vector<std::string> StatFields(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return {};
  return absl::StrSplit(stat.substr(paren + 2), ' ');
}

bool Alive(pid_t pid) {
  const std::vector<std::string> fields = StatFields(pid);
  return !fields.empty() && fields[0] != "Z" && fields[0] != "X";
}

// Live children of `parent` whose command line contains `what`.
std::vector<pid_t> Children(pid_t parent, const std::string& what) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = std::stoi(name);
    const std::vector<std::string> fields = StatFields(pid);
    if (fields.size() < 2 || std::stoi(fields[1]) != parent || !Alive(pid)) continue;
    std::string cmdline = ReadFile("/proc/" + name + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(what) != std::string::npos) found.push_back(pid);
  }
  return found;
}

// Polls `condition` every 50 ms for at most `timeout`.
template <typename F>
bool Eventually(F condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return true;
}

class SupervisionTest : public ::testing::Test {
 protected:
  // `cluster up` with one prefill and `decode` decode workers; the router's address once ready.
  std::string StartCluster(int decode = 1, const std::vector<std::string>& more = {}) {
    std::vector<std::string> argv = {kBinary,         "cluster",      "up",   "--model",       kModel,
                                     "--prefill",     "1",            "--decode", std::to_string(decode),
                                     "--threads",     "1",            "--kv-cache-mb", "8",
                                     "--block-size",  "16",           "--max-batch-tokens", "16"};
    argv.insert(argv.end(), more.begin(), more.end());
    auto cluster = cli::ChildProcess::Spawn("cluster", argv);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    if (!cluster.ok()) return "";
    cluster_ = *std::move(cluster);
    auto ready = cluster_->WaitLine("ready ", absl::Seconds(180));
    EXPECT_TRUE(ready.ok()) << ready.status();
    return ready.ok() ? *ready : "";
  }

  // One child of `cluster up` running `what`, or -1.
  pid_t Child(const std::string& what) {
    const std::vector<pid_t> found = Children(cluster_->pid(), what);
    EXPECT_EQ(found.size(), 1u) << what;
    return found.size() == 1 ? found[0] : -1;
  }

  std::unique_ptr<cli::ChildProcess> cluster_;
};

TEST_F(SupervisionTest, AKilledWorkerIsRestartedAndEveryChildDiesWithClusterUp) {
  const std::string router = StartCluster();
  ASSERT_FALSE(router.empty());
  const pid_t router_pid = Child(" router ");
  const pid_t prefill_pid = Child("prefill-worker");
  const pid_t killed = Child("decode-worker");
  ASSERT_GT(killed, 0);
  ASSERT_EQ(kill(killed, SIGKILL), 0);

  auto restarted = cluster_->WaitLine("decode-0 restarted ", absl::Seconds(120));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  const pid_t replacement = Child("decode-worker");
  EXPECT_GT(replacement, 0);
  EXPECT_NE(replacement, killed);
  client::ClientOptions options;
  options.default_timeout = absl::Seconds(60);
  auto client = client::Client::Connect(router, options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(WaitForPool(*client, [](int prefill, int decode) { return prefill == 1 && decode == 1; }));
  const std::vector<int32_t> prompt = GoldenInput();
  absl::StatusOr<client::GenerateResult> result = absl::UnavailableError("not sent");
  // The old decode worker's registration may still be in the pool for a heartbeat timeout: a request
  // placed on it fails at once and the router retries it; the restarted worker serves it.
  ASSERT_TRUE(Eventually([&] { return (result = client->Generate(Greedy(prompt, 6))).ok(); }, absl::Seconds(30)))
      << result.status();
  EXPECT_EQ(result->output_ids, EngineGreedy(prompt, 6));

  // kill -9 of `cluster up`: no child may serve on as an orphan.
  ASSERT_EQ(kill(cluster_->pid(), SIGKILL), 0);
  for (const pid_t pid : {router_pid, prefill_pid, replacement}) {
    EXPECT_TRUE(Eventually([&] { return !Alive(pid); }, absl::Seconds(60))) << "pid " << pid << " outlived its parent";
  }
}

TEST_F(SupervisionTest, WhenTheRouterDiesClusterUpStopsTheWorkersAndExitsWithAnError) {
  ASSERT_FALSE(StartCluster().empty());
  const pid_t prefill_pid = Child("prefill-worker");
  const pid_t decode_pid = Child("decode-worker");
  ASSERT_EQ(kill(Child(" router "), SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return cluster_->Exited(); }, absl::Seconds(90)));
  EXPECT_EQ(cluster_->Stop(absl::ZeroDuration()), "exit status 1");
  EXPECT_FALSE(Alive(prefill_pid));
  EXPECT_FALSE(Alive(decode_pid));
}

// SIGTERM under load: every worker drains at once, streams get the grace, and those still running
// after it end UNAVAILABLE saying so (no worker is left to migrate them to), never cut silently.
TEST_F(SupervisionTest, SigtermDrainsEveryWorkerAtOnceAndEndsWhatOutlivesTheGraceWithAStatus) {
  constexpr absl::Duration kGrace = absl::Seconds(1);
  constexpr int32_t kMaxNew = 450;  // 56 + 450 of the model's 512 positions: longer than the grace
  const std::vector<int32_t> prompt = GoldenInput();
  const std::vector<int32_t> truth = EngineGreedy(prompt, kMaxNew);
  const std::string router = StartCluster(2, {"--drain-grace", "1"});
  ASSERT_FALSE(router.empty());
  const std::vector<pid_t> decode_pids = Children(cluster_->pid(), "decode-worker");
  ASSERT_EQ(decode_pids.size(), 2u);
  client::ClientOptions options;
  options.default_timeout = absl::Seconds(120);
  auto client = client::Client::Connect(router, options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<client::GenerateStream> streams;
  std::vector<std::vector<int32_t>> tokens(4);
  for (int i = 0; i < 4; ++i) streams.push_back(client->Stream(Greedy(prompt, kMaxNew)));
  for (int i = 0; i < 4; ++i) {
    while (tokens[i].empty()) {
      auto chunk = streams[i].Next();
      ASSERT_TRUE(chunk.ok()) << chunk.status();
      ASSERT_TRUE(chunk->has_value());
      ASSERT_FALSE((*chunk)->final.has_value()) << "finished before the drain";
      tokens[i].insert(tokens[i].end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
    }
  }
  const absl::Time sent = absl::Now();
  ASSERT_EQ(kill(cluster_->pid(), SIGTERM), 0);
  // Both decode workers are gone within one grace and a margin: drained side by side, not in turn.
  for (const pid_t pid : decode_pids) {
    EXPECT_TRUE(Eventually([&] { return !Alive(pid); }, kGrace + absl::Seconds(8))) << "decode worker " << pid;
  }
  for (int i = 0; i < 4; ++i) {
    absl::Status ended;
    bool final = false;
    for (;;) {
      auto chunk = streams[i].Next();
      if (!chunk.ok()) {
        ended = chunk.status();
        break;
      }
      if (!chunk->has_value()) break;
      tokens[i].insert(tokens[i].end(), (*chunk)->token_ids.begin(), (*chunk)->token_ids.end());
      final = final || (*chunk)->final.has_value();
    }
    ASSERT_LE(tokens[i].size(), truth.size());
    EXPECT_EQ(tokens[i], std::vector<int32_t>(truth.begin(), truth.begin() + tokens[i].size())) << "stream " << i;
    if (ended.ok()) {
      EXPECT_TRUE(final);
      EXPECT_EQ(tokens[i], truth) << "stream " << i << " ended OK with " << tokens[i].size() << " tokens";
    } else {
      EXPECT_EQ(ended.code(), absl::StatusCode::kUnavailable) << ended;
      EXPECT_NE(ended.message().find("drain grace"), std::string::npos) << ended;
    }
  }
  ASSERT_TRUE(Eventually([&] { return cluster_->Exited(); }, absl::Seconds(30)));
  EXPECT_EQ(cluster_->Stop(absl::ZeroDuration()), "exit status 0");
  EXPECT_LT(absl::Now() - sent, absl::Seconds(40));
}

TEST(OnePortOneServer, ASecondRouterOnTheSamePortFailsToStart) {
  std::string address;
  auto first = StartService("router", {kBinary, "router", "--listen", "127.0.0.1:0", "--model", kModel}, &address);
  ASSERT_NE(first, nullptr);
  // With the token, so that it gets as far as binding the port.
  std::vector<std::string> argv = {kBinary, "router", "--listen", address, "--model", kModel};
  const std::vector<std::string> token = e2e::ClusterTokenFlags();
  argv.insert(argv.end(), token.begin(), token.end());
  auto second = cli::ChildProcess::Spawn("second router", argv);
  ASSERT_TRUE(second.ok()) << second.status();
  auto listening = (*second)->WaitListening(absl::Seconds(60));
  EXPECT_FALSE(listening.ok()) << "a second router bound " << address;
  EXPECT_EQ((*second)->Stop(absl::Seconds(10)), "exit status 1");
}

}  // namespace
}  // namespace indexcache
