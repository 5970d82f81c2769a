# The generated models issue 12's benchmarks run (sourced by run_cluster_ttft.sh and
# run_gpu_neighbor.sh, from the repository root): each function prints the model's directory under
# $cache, generating it on first use (torch and transformers, as on the GPU machine).

# The 16-layer model: the weights bench/cuda/e2e_transformers.py saves (same config, seed 0), without
# its transformers timing runs.
small_model() {
  local dir=$cache/e2e-16layer
  if [[ ! -f $dir/config.json ]]; then
    python3 - "$dir" <<'PY'
import sys
import torch
sys.path.insert(0, "bench/cuda")
import e2e_transformers
from transformers import GlmMoeDsaForCausalLM
torch.manual_seed(0)
GlmMoeDsaForCausalLM(e2e_transformers.config(1)).to(torch.bfloat16).save_pretrained(sys.argv[1])
PY
  fi
  echo "$dir"
}

paper_model() {
  local dir=$cache/paper-shape-47layer
  [[ -f $dir/config.json ]] || python3 bench/cuda/paper_shape_model.py "$dir" >&2
  echo "$dir"
}
