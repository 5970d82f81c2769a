#!/usr/bin/env bash
# Times `indexcache search` on the bundled model beside references from the same run:
#   - one all-Full pass over the calibration set (`indexcache perplexity`, one batch per window);
#   - the naive search, which scores every candidate from scratch: Σ_steps (candidates) such passes;
#   - the work model of the shared-prefix search: each step one whole pass plus each candidate j from
#     layer j on, in layer passes (output head counted as one layer), converted with the measured pass.
# Writes bench/results/search-<UTC date>.md. Environment: BUILD_DIR (default build; the `indexcache`
# target must be built), KEEP (default 2), CONTEXT (default 512), CALIBRATION (default: README.md and
# docs/architecture.md concatenated), OMP_WAIT_POLICY (default passive: the machine is shared).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${BUILD_DIR:-$root/build}/tools/indexcache"
[[ -x "$bin" ]] || { echo "run_search_bench.sh: build the indexcache target first ($bin)" >&2; exit 1; }
model="models/glm-dsa-tiny-random"
keep="${KEEP:-2}"
context="${CONTEXT:-512}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
export INDEXCACHE_LOG_LEVEL="${INDEXCACHE_LOG_LEVEL:-warning}"
cd "$root"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
calibration="${CALIBRATION:-$work/calibration.txt}"
[[ -n "${CALIBRATION:-}" ]] || cat README.md docs/architecture.md > "$calibration"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && commit="$commit-dirty"
stamp="$(date -u +%Y%m%d-%H%M%S)"
load_before="$(cat /proc/loadavg)"

now() { date +%s.%N; }
t0=$(now); "$bin" perplexity --model "$model" --text "$calibration" --context "$context" --max-batch-tokens "$context" \
  > "$work/ppl1.txt" 2>/dev/null; t1=$(now)
"$bin" search --model "$model" --calibration "$calibration" --keep "$keep" --context "$context" \
  > "$work/search.txt" 2> "$work/search.err"; t2=$(now)
"$bin" perplexity --model "$model" --text "$calibration" --context "$context" --max-batch-tokens "$context" \
  > "$work/ppl2.txt" 2>/dev/null; t3=$(now)
load_after="$(cat /proc/loadavg)"

out="bench/results/search-$stamp.md"
export WORK="$work" T0="$t0" T1="$t1" T2="$t2" T3="$t3" MODEL="$model" KEEP_N="$keep" CONTEXT_N="$context" \
  COMMIT="$commit" STAMP="$stamp" LOAD_BEFORE="$load_before" LOAD_AFTER="$load_after" CORES="$(nproc)"
/usr/bin/python3 - > "$out" <<'PY'
import json, os, subprocess
e = os.environ
work = e["WORK"]
t0, t1, t2, t3 = (float(e[k]) for k in ("T0", "T1", "T2", "T3"))
layers = json.load(open(f"{e['MODEL']}/config.json"))["num_hidden_layers"]
steps = [l.split() for l in open(f"{work}/search.txt") if l.startswith("step ")]
shared = [int(s[3]) for s in steps[1:]]
tokens = int(open(f"{work}/ppl1.txt").read().split()[1])
full = (t1 - t0 + t3 - t2) / 2  # the all-Full pass, measured before and after the search
search = t2 - t1
# Passes as layer passes over every calibration token, the output head counted as one more layer.
candidates = list(range(1, layers))
naive_passes = work_units = 0
for layer in shared:
    naive_passes += len(candidates)
    work_units += (layers + 1) + sum(layers - j + 1 for j in candidates)
    candidates.remove(layer)
model_passes = work_units / (layers + 1)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print(f"""# indexcache search: {e['MODEL']}, keep {e['KEEP_N']}

- date: {e['STAMP']} (UTC); CPU: {cpu}, {e['CORES']} logical cores; OMP_WAIT_POLICY={e['OMP_WAIT_POLICY']}
- git commit: `{e['COMMIT']}`; command: `KEEP={e['KEEP_N']} CONTEXT={e['CONTEXT_N']} bench/run_search_bench.sh`
- load average before / after: `{e['LOAD_BEFORE']}` / `{e['LOAD_AFTER']}`
- calibration: {tokens} predicted tokens in windows of {e['CONTEXT_N']}; {layers} layers, {len(shared)} steps
- result: `{steps[-1][-1]}`; loss {steps[0][5]} (all-Full) -> {steps[-1][5]}

| | all-Full passes | seconds |
| --- | --- | --- |
| one all-Full pass (`perplexity`, one batch per window; mean of before and after) | 1 | {full:.2f} |
| naive search: every candidate scored from scratch (estimated) | {naive_passes} | {naive_passes * full:.1f} |
| work model of the shared-prefix search (estimated) | {model_passes:.1f} | {model_passes * full:.1f} |
| **`indexcache search` (measured)** | | **{search:.1f}** |

Measured: {naive_passes * full / search:.2f}x less time than the naive search (work model: {naive_passes / model_passes:.2f}x).
The all-Full pass took {t1 - t0:.2f} s before and {t3 - t2:.2f} s after the search.""")
PY
echo "wrote $out"
