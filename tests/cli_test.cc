// The `indexcache` binary, run as a user runs it (fork/exec, stdout and stderr captured apart):
// generate (--prompt and --input-ids, --json), score (logits and per-layer top-k in safetensors),
// perplexity (its NLL recomputed from score's logits), search (its losses are perplexity's), and the
// error paths of the flag parser.
// Truths: transformers' goldens (tests/data/goldens) and the tokenizer library.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/safetensors/safetensors_file.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kBinary = std::string(INDEXCACHE_BINARY_DIR) + "/tools/indexcache";
const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";
const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json ReadJson(const std::string& path) { return nlohmann::json::parse(ReadFile(path)); }

struct ProcessResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// The binary is built by the `all` target, possibly while this test already runs: wait until it
// exists and has stopped growing (the linker has finished writing it).
bool WaitForBinary() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  std::error_code ec;
  uintmax_t last_size = 0;
  int stable = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (access(kBinary.c_str(), X_OK) == 0) {
      const uintmax_t size = fs::file_size(kBinary, ec);
      stable = (!ec && size == last_size && size > 0) ? stable + 1 : 0;
      last_size = ec ? 0 : size;
      if (stable >= 2) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return false;
}

class CliTest : public testing::Test {
 protected:
  static void SetUpTestSuite() { binary_ready_ = WaitForBinary(); }

  void SetUp() override {
    ASSERT_TRUE(binary_ready_) << kBinary << " does not exist: build the `indexcache` target (part of `all`)";
    std::string tmpl = (fs::temp_directory_path() / "ic_cli_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Runs the binary with `args`; stdout and stderr go to files (no pipe can fill up and block).
  ProcessResult Exec(const std::vector<std::string>& args) {
    const std::string out_path = dir_ + "/stdout", err_path = dir_ + "/stderr";
    const pid_t pid = fork();
    if (pid == 0) {
      const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || err < 0) _exit(127);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(kBinary.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      setenv("OMP_WAIT_POLICY", "passive", 1);
      execv(kBinary.c_str(), argv.data());
      _exit(127);
    }
    ProcessResult run;
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid) {
      run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    run.out = ReadFile(out_path);
    run.err = ReadFile(err_path);
    return run;
  }

  std::string WriteIds(const std::string& name, const std::vector<int32_t>& ids) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << nlohmann::json(ids).dump();
    return path;
  }

  // The one JSON object `generate --json` prints on stdout.
  static nlohmann::json OnlyJsonLine(const ProcessResult& run) {
    std::vector<std::string> lines = absl::StrSplit(run.out, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << run.out;
    if (lines.empty()) return {};
    nlohmann::json j = nlohmann::json::parse(lines[0], nullptr, false);
    EXPECT_TRUE(j.is_object()) << lines[0];
    return j;
  }

  static inline bool binary_ready_ = false;
  std::string dir_;
};

std::unique_ptr<BpeTokenizer> BundledTokenizer() {
  auto tokenizer = BpeTokenizer::FromFile(kBundled + "/tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// -log softmax(row)[target] in double.
double Nll(const float* row, int64_t vocab, int32_t target) {
  double max = row[0];
  for (int64_t v = 1; v < vocab; ++v) max = std::max<double>(max, row[v]);
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
  return std::log(sum) + max - row[target];
}

template <typename T>
std::vector<T> TensorValues(const SafetensorsFile& file, const std::string& name, std::vector<int64_t>* shape,
                            StDType dtype) {
  const TensorView* view = file.Find(name);
  EXPECT_NE(view, nullptr) << name;
  if (view == nullptr) return {};
  EXPECT_EQ(view->dtype, dtype) << name;
  *shape = view->shape;
  std::vector<T> values(view->nbytes / sizeof(T));
  std::memcpy(values.data(), view->data, view->nbytes);
  return values;
}

TEST_F(CliTest, GeneratePromptPrintsOneJsonObject) {
  const std::string prompt = "The quick brown fox jumps over the lazy dog";
  ProcessResult run = Exec({"generate", "--model", kBundled, "--prompt", prompt, "--max-new-tokens", "8", "--temperature", "0",
                  "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json j = OnlyJsonLine(run);
  ASSERT_TRUE(j.contains("output_ids")) << j.dump();
  ASSERT_TRUE(j.contains("text")) << j.dump();
  const std::vector<int32_t> ids = j["output_ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(ids.size(), 8u);
  auto tokenizer = BundledTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(j["prompt_tokens"].get<size_t>(), tokenizer->Encode(prompt).size());
  auto text = tokenizer->Decode(ids, /*skip_special_tokens=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(j["text"].get<std::string>(), *text);
  EXPECT_EQ(j["finish_reason"], "length");

  // Greedy is deterministic: the same ids again, and the same as feeding the prompt's ids.
  ProcessResult again = Exec({"generate", "--model", kBundled, "--input-ids", WriteIds("p.json", tokenizer->Encode(prompt)),
                    "--max-new-tokens", "8", "--temperature", "0", "--json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(OnlyJsonLine(again)["output_ids"].get<std::vector<int32_t>>(), ids);
}

// The bundled golden: transformers' greedy continuation of its 16-token prompt.
TEST_F(CliTest, GenerateInputIdsMatchesTransformersGreedy) {
  const nlohmann::json greedy = ReadJson(kGoldens + "bundled/expected.json")["greedy"];
  const std::vector<int32_t> want = greedy["output_ids"].get<std::vector<int32_t>>();
  const std::string ids = WriteIds("prompt.json", greedy["prompt_ids"].get<std::vector<int32_t>>());
  ProcessResult run = Exec({"generate", "--model", kBundled, "--input-ids", ids, "--max-new-tokens", std::to_string(want.size()),
                  "--temperature", "0", "--ignore-eos", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json j = OnlyJsonLine(run);
  EXPECT_EQ(j["output_ids"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(j["prompt_tokens"].get<size_t>(), 16u);
}

// score against transformers on two goldens: top-k < T (dense_allfull) and top-k > T
// (dense_topk_ge_len, k = min(index_topk, T) = T).
TEST_F(CliTest, ScoreWritesLogitsAndTopK) {
  for (const std::string name : {"dense_allfull", "dense_topk_ge_len"}) {
    SCOPED_TRACE(name);
    const nlohmann::json expected = ReadJson(kGoldens + name + "/expected.json");
    const nlohmann::json config = ReadJson(kGoldens + name + "/config.json");
    const std::vector<int32_t> ids = expected["input_ids"].get<std::vector<int32_t>>();
    const int64_t t = static_cast<int64_t>(ids.size());
    const int64_t vocab = config["vocab_size"].get<int64_t>();
    const int64_t k = std::min<int64_t>(config["index_topk"].get<int64_t>(), t);
    const std::string out = dir_ + "/" + name + ".safetensors";
    ProcessResult run = Exec({"score", "--model", kGoldens + name, "--input-ids", WriteIds(name + ".json", ids), "--output", out,
                    "--max-batch-tokens", "16"});
    ASSERT_EQ(run.exit_code, 0) << run.err;
    auto got = SafetensorsFile::Open(out);
    ASSERT_TRUE(got.ok()) << got.status();
    auto want = SafetensorsFile::Open(kGoldens + name + "/expected.safetensors");
    ASSERT_TRUE(want.ok()) << want.status();

    std::vector<int64_t> shape;
    const std::vector<float> logits = TensorValues<float>(*got, "logits", &shape, StDType::kF32);
    ASSERT_EQ(shape, (std::vector<int64_t>{t, vocab}));
    const std::vector<float> ref = TensorValues<float>(*want, "logits", &shape, StDType::kF32);
    for (int64_t row = 0; row < t; ++row) {
      double scale = 1e-6;
      for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::abs(static_cast<double>(ref[row * vocab + v])));
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_NEAR(logits[row * vocab + v], ref[row * vocab + v], 1e-4 * scale) << "row " << row << " token " << v;
      }
    }

    const int32_t layers = config["num_hidden_layers"].get<int32_t>();
    for (int32_t l = 0; l < layers; ++l) {
      const std::string tensor = "topk." + std::to_string(l);
      const std::vector<int32_t> topk = TensorValues<int32_t>(*got, tensor, &shape, StDType::kI32);
      ASSERT_EQ(shape, (std::vector<int64_t>{t, k})) << tensor;
      const std::vector<int32_t> ref_topk = TensorValues<int32_t>(*want, tensor, &shape, StDType::kI32);
      for (int64_t row = 0; row < t; ++row) {
        const int64_t valid = std::min<int64_t>(k, row + 1);
        std::set<int32_t> got_set, want_set(ref_topk.begin() + row * k, ref_topk.begin() + (row + 1) * k);
        for (int64_t j = 0; j < k; ++j) {
          const int32_t pos = topk[row * k + j];
          if (j < valid) {
            EXPECT_GE(pos, 0) << tensor << " row " << row << " col " << j;
            EXPECT_LE(pos, row) << tensor << " row " << row << ": a key after the query";
          } else {
            EXPECT_EQ(pos, -1) << tensor << " row " << row << " col " << j << ": padding expected";
          }
          got_set.insert(pos);
        }
        ASSERT_EQ(got_set, want_set) << tensor << " row " << row;
      }
    }
  }
}

TEST_F(CliTest, PerplexityEqualsNllFromScoreLogits) {
  const std::string text =
      "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
      "associated documentation files, to deal in the Software without restriction.";
  const std::string text_path = dir_ + "/text.txt";
  std::ofstream(text_path) << text;
  auto tokenizer = BundledTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = tokenizer->Encode(text);
  ASSERT_GT(ids.size(), 20u);
  const int64_t vocab = ReadJson(kBundled + "/config.json")["vocab_size"].get<int64_t>();

  // Windows of --context tokens are scored independently: one window, then two.
  for (size_t context : {ids.size(), ids.size() / 2 + 1}) {
    SCOPED_TRACE("context " + std::to_string(context));
    double total = 0.0;
    int64_t predicted = 0;
    for (size_t begin = 0; begin + 1 < ids.size(); begin += context) {
      const std::vector<int32_t> window(ids.begin() + begin, ids.begin() + std::min(ids.size(), begin + context));
      const std::string out = dir_ + "/window.safetensors";
      ProcessResult score = Exec({"score", "--model", kBundled, "--input-ids", WriteIds("window.json", window), "--output", out});
      ASSERT_EQ(score.exit_code, 0) << score.err;
      auto file = SafetensorsFile::Open(out);
      ASSERT_TRUE(file.ok()) << file.status();
      std::vector<int64_t> shape;
      const std::vector<float> logits = TensorValues<float>(*file, "logits", &shape, StDType::kF32);
      ASSERT_EQ(shape, (std::vector<int64_t>{static_cast<int64_t>(window.size()), vocab}));
      for (size_t i = 0; i + 1 < window.size(); ++i) {
        total += Nll(&logits[i * vocab], vocab, window[i + 1]);
        ++predicted;
      }
    }
    const double mean = total / predicted;

    ProcessResult run = Exec({"perplexity", "--model", kBundled, "--text", text_path, "--context", std::to_string(context)});
    ASSERT_EQ(run.exit_code, 0) << run.err;
    long long tokens = 0;
    double printed_nll = 0.0, printed_ppl = 0.0;
    ASSERT_EQ(std::sscanf(run.out.c_str(), "tokens %lld mean_nll %lf perplexity %lf", &tokens, &printed_nll,
                          &printed_ppl),
              3)
        << run.out;
    EXPECT_EQ(tokens, predicted);
    EXPECT_NEAR(printed_nll, mean, 2e-6);
    EXPECT_NEAR(printed_ppl, std::exp(mean), 1e-4 * std::max(1.0, std::exp(mean)));
  }
}

// search: every step's printed loss is `perplexity`'s mean NLL under that step's pattern for the same
// file and --context (two code paths: the search's resumed one-batch passes, perplexity's chunked
// engine scoring). The pattern is the last stdout line and the --out file; a .jsonl of the same token
// ids searches the same way.
TEST_F(CliTest, SearchStepLossesEqualPerplexity) {
  std::mt19937 rng(7);
  const std::vector<std::string> words = {"the", "river", "ran", "past", "old", "stone", "houses", "and", "quiet",
                                          "fields", "where", "children", "played", "until", "evening", "light"};
  std::string text;
  for (int i = 0; i < 420; ++i) text += words[rng() % words.size()] + (i % 13 == 12 ? ".\n" : " ");
  const std::string text_path = dir_ + "/calibration.txt", out_path = dir_ + "/pattern.txt";
  std::ofstream(text_path) << text;
  auto tokenizer = BundledTokenizer();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> ids = tokenizer->Encode(text);
  ASSERT_GT(ids.size(), 300u);
  const std::string context = "150";  // above index_topk (64): Shared layers change the selections

  ProcessResult run = Exec({"search", "--model", kBundled, "--calibration", text_path, "--keep", "6", "--context", context,
                            "--out", out_path});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.err, HasSubstr("candidates evaluated"));
  std::vector<std::string> lines = absl::StrSplit(run.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << run.out;  // steps 0, 1, 2 and the pattern
  std::string last_pattern;
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(lines[step]);
    int printed_step = -1;
    char shared[16] = {0}, pattern[64] = {0};
    double loss = 0.0, delta = 0.0;
    ASSERT_EQ(std::sscanf(lines[step].c_str(), "step %d shared %15s loss %lf delta %lf pattern %63s", &printed_step, shared,
                          &loss, &delta, pattern),
              5);
    EXPECT_EQ(printed_step, step);
    EXPECT_EQ(std::count(pattern, pattern + std::strlen(pattern), 'F'), 8 - step);
    EXPECT_EQ(pattern[0], 'F');
    ProcessResult ppl = Exec({"perplexity", "--model", kBundled, "--text", text_path, "--context", context, "--index-pattern",
                              pattern});
    ASSERT_EQ(ppl.exit_code, 0) << ppl.err;
    long long tokens = 0;
    double nll = 0.0, perplexity = 0.0;
    ASSERT_EQ(std::sscanf(ppl.out.c_str(), "tokens %lld mean_nll %lf perplexity %lf", &tokens, &nll, &perplexity), 3);
    EXPECT_NEAR(loss, nll, 2e-5);
    last_pattern = pattern;
  }
  EXPECT_EQ(lines[3], last_pattern);
  EXPECT_EQ(ReadFile(out_path), last_pattern + "\n");

  // The same ids as a one-document .jsonl: the same windows, the same search.
  const std::string jsonl_path = dir_ + "/calibration.jsonl";
  std::ofstream(jsonl_path) << nlohmann::json(ids).dump() << "\n";
  ProcessResult from_ids = Exec({"search", "--model", kBundled, "--calibration", jsonl_path, "--keep", "6", "--context", context});
  ASSERT_EQ(from_ids.exit_code, 0) << from_ids.err;
  EXPECT_EQ(from_ids.out, run.out);
}

// search --length-ranges: each range's pattern is what a plain search on windows of its threshold's
// length finds, and the result is a --length-patterns value an engine takes.
TEST_F(CliTest, SearchByLengthRangesSearchesEachRangeOnItsOwnWindows) {
  std::mt19937 rng(11);
  const std::vector<std::string> words = {"a", "small", "boat", "drifted", "under", "the", "bridge", "while",
                                          "gulls", "circled", "over", "grey", "water", "near", "harbor", "walls"};
  std::string text;
  for (int i = 0; i < 360; ++i) text += words[rng() % words.size()] + (i % 11 == 10 ? ".\n" : " ");
  const std::string text_path = dir_ + "/ranges.txt", out_path = dir_ + "/length_patterns.txt";
  std::ofstream(text_path) << text;
  auto last_line = [](const std::string& out) {
    std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
    return lines.empty() ? std::string() : lines.back();
  };
  ProcessResult ranges = Exec({"search", "--model", kBundled, "--calibration", text_path, "--keep", "6",
                               "--length-ranges", "100,200", "--out", out_path});
  ASSERT_EQ(ranges.exit_code, 0) << ranges.err;
  EXPECT_THAT(ranges.out, HasSubstr("range 100\n"));
  EXPECT_THAT(ranges.out, HasSubstr("range 200\n"));
  std::string want;
  for (const std::string context : {"100", "200"}) {
    ProcessResult one = Exec({"search", "--model", kBundled, "--calibration", text_path, "--keep", "6", "--context", context});
    ASSERT_EQ(one.exit_code, 0) << one.err;
    want += (want.empty() ? "" : ",") + context + ":" + last_line(one.out);
  }
  EXPECT_EQ(last_line(ranges.out), want);
  EXPECT_EQ(ReadFile(out_path), want + "\n");
  ProcessResult generate = Exec({"generate", "--model", kBundled, "--input-ids", WriteIds("prompt.json", {5, 6, 7}),
                                 "--max-new-tokens", "2", "--length-patterns", want});
  EXPECT_EQ(generate.exit_code, 0) << generate.err;
  ProcessResult bad = Exec({"search", "--model", kBundled, "--calibration", text_path, "--keep", "6",
                            "--length-ranges", "200,100"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.err, HasSubstr("--length-ranges takes increasing prompt lengths"));
}

// search --retrieval: the cases are scored beside the windows (and counted in the progress line).
TEST_F(CliTest, SearchScoresRetrievalCasesBesideTheWindows) {
  const std::string calibration = dir_ + "/calibration.jsonl", cases = dir_ + "/cases.jsonl";
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 200; ++i) ids.push_back(3 + (i * 37) % 2000);
  std::ofstream(calibration) << nlohmann::json(ids).dump() << "\n";
  std::ofstream(cases) << R"({"prompt": "The pass key is 12345. What is the pass key? The pass key is", "answer": " 12345"})"
                       << "\n"
                       << R"({"prompt_ids": [5, 6, 7, 8, 9], "answer_ids": [10, 11]})" << "\n";
  ProcessResult run = Exec({"search", "--model", kBundled, "--calibration", calibration, "--keep", "7", "--context",
                            "100", "--retrieval", cases, "--retrieval-weight", "2"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.err, HasSubstr("2 windows, 2 retrieval cases"));
}

struct BadInvocation {
  std::vector<std::string> args;
  std::string says;
};

TEST_F(CliTest, BadInvocationsFailWithAMessage) {
  const std::string ids = WriteIds("ids.json", {1, 2, 3});
  const std::string not_array = dir_ + "/object.json", negative = dir_ + "/negative.json";
  std::ofstream(not_array) << R"({"ids": [1, 2]})";
  std::ofstream(negative) << "[1, -2, 3]";
  const std::string out_of_vocab = WriteIds("oov.json", {1, 2048});
  const std::string empty = dir_ + "/empty.txt", ids_jsonl = dir_ + "/ids.jsonl";
  std::ofstream(empty) << "";
  std::ofstream(ids_jsonl) << "[1, 2, 3, 4]\n";
  const std::string bad_case = dir_ + "/retrieval.jsonl";
  std::ofstream(bad_case) << R"({"prompt_ids": [1, 2], "answer_ids": [3]})" << "\n"
                          << R"({"prompt": "", "answer": " 42"})" << "\n";
  const std::vector<BadInvocation> cases = {
      {{}, "usage"},
      {{"frobnicate"}, "unknown command 'frobnicate'"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--bogus", "1"}, "unknown flag --bogus"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--max-new-tokens", "many"},
       "--max-new-tokens expects an integer"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--temperature", "hot"}, "--temperature expects a number"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--temperature", "-1"}, "temperature"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--top-p", "0"}, "top_p"},
      {{"generate", "--model", kBundled, "--prompt"}, "--prompt needs a value"},
      {{"generate", "--prompt", "hi"}, "--model is required"},
      {{"generate", "--model", kBundled}, "exactly one of --prompt"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--input-ids", ids}, "exactly one of --prompt"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--index-pattern", "FFFFFFFF", "--index-freq", "2"},
       "not both"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--index-freq", "0"}, "--index-freq"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--index-pattern", "SFFFFFFF"}, "Shared"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--json=yes"}, "--json takes no value"},
      {{"generate", "--model", "/nonexistent/model", "--prompt", "hi"}, "/nonexistent/model"},
      {{"generate", "--model", kBundled, "--input-ids", dir_ + "/missing.json"}, "missing.json"},
      {{"generate", "--model", kGoldens + "moe_freq2", "--prompt", "hi"}, "tokenizer"},
      {{"generate", "--model", kBundled, "--input-ids", not_array}, "expected a JSON array"},
      {{"generate", "--model", kBundled, "--input-ids", negative}, "-2"},
      {{"generate", "--model", kBundled, "--input-ids", out_of_vocab}, "outside the vocabulary"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--stop-id", "eos"}, "--stop-id expects an integer"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--stop-id", "5000"}, "stop_token_ids"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--kv-cache-mb", "0"}, "--kv-cache-mb"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--threads", "two"}, "--threads expects an integer"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--max-batch-tokens", "0"}, "max batch tokens"},
      {{"generate", "--model", kBundled, "--prompt", "hi", "--device", "abacus"}, "abacus"},
      {{"score", "--model", kBundled, "--input-ids", ids}, "--output is required"},
      {{"score", "--input-ids", ids, "--output", dir_ + "/x.safetensors"}, "--model is required"},
      {{"score", "--model", kBundled, "--input-ids", ids, "--output", dir_ + "/x.safetensors", "--index-pattern",
        "FFFFFFFF", "--index-freq", "4"},
       "not both"},
      {{"perplexity", "--model", kBundled}, "--text is required"},
      {{"perplexity", "--model", kBundled, "--text", ids, "--context", "1"}, "--context"},
      {{"perplexity", "--text", ids}, "--model is required"},
      {{"search", "--model", kBundled, "--calibration", ids}, "--keep is required"},
      {{"search", "--model", kBundled, "--keep", "2"}, "--calibration is required"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "0"}, "--keep must be at least 1"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "9"}, "exceeds the model's 8 layers"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "two"}, "--keep expects an integer"},
      {{"search", "--model", kBundled, "--calibration", dir_ + "/missing.txt", "--keep", "2"}, "missing.txt"},
      {{"search", "--model", kBundled, "--calibration", empty, "--keep", "2"}, "nothing to score"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--context", "1"}, "--context"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--out", "/nonexistent/dir/p.txt"},
       "cannot write --out"},
      {{"search", "--model", kGoldens + "moe_freq2", "--calibration", ids_jsonl, "--keep", "2"}, "indexer weights"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--index-pattern", "FFFFFFFF"},
       "unknown flag --index-pattern"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--retrieval-weight", "2"},
       "give the file too"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--retrieval", bad_case},
       "retrieval.jsonl:2: the prompt and the answer must both hold tokens"},
      {{"search", "--model", kBundled, "--calibration", ids, "--keep", "2", "--retrieval", ids_jsonl},
       "expected a JSON object"},
  };
  for (const BadInvocation& bad : cases) {
    std::string line;
    for (const std::string& a : bad.args) line += a + " ";
    SCOPED_TRACE(line);
    ProcessResult run = Exec(bad.args);
    EXPECT_NE(run.exit_code, 0);
    EXPECT_LT(run.exit_code, 128) << "killed by a signal: " << run.err;
    EXPECT_THAT(run.err, HasSubstr(bad.says));
  }
}

TEST_F(CliTest, HelpSucceeds) {
  for (const std::string command : {"generate", "score", "perplexity", "search"}) {
    ProcessResult run = Exec({command, "--help"});
    EXPECT_EQ(run.exit_code, 0) << command;
    EXPECT_THAT(run.out, HasSubstr("usage: indexcache " + command));
    EXPECT_THAT(run.out, HasSubstr("--model"));
  }
}

}  // namespace
}  // namespace indexcache
