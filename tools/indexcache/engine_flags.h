// Flags every engine-running subcommand shares (model, device, IndexCache pattern, cache sizing),
// the sampling flags, and the prompt input (--prompt text or --input-ids JSON file).
#pragma once

#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"
#include "common/sampling/sampling_params.h"
#include "tools/indexcache/args.h"

namespace indexcache::cli {

// Flag names for Args::Parse.
std::set<std::string> EngineFlagNames();
std::set<std::string> SamplingFlagNames();
std::set<std::string> SamplingSwitchNames();

absl::StatusOr<EngineOptions> EngineOptionsFromArgs(const Args& args);
absl::StatusOr<SamplingParams> SamplingParamsFromArgs(const Args& args);
// A JSON file holding an array of integers.
absl::StatusOr<std::vector<int32_t>> ReadTokenIdsFile(const std::string& path);
// The prompt: --input-ids FILE.json, or --prompt TEXT encoded with the model's tokenizer.
absl::StatusOr<std::vector<int32_t>> PromptFromArgs(const Args& args, const Engine& engine);

// "--model DIR [--device cpu] …" lines for usage text.
extern const char kEngineFlagsUsage[];
extern const char kSamplingFlagsUsage[];

}  // namespace indexcache::cli
