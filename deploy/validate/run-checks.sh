#!/usr/bin/env bash
# The deployment checks that ctest runs (tests/CMakeLists.txt), offline once tools/setup-deps.sh has
# installed kubectl, node and this folder's pinned packages (npm ci):
#   run-checks.sh manifests    renders every overlay of deploy/k8s with `kubectl kustomize` and
#                              validates every object against the Kubernetes API schemas
#   run-checks.sh dockerfiles  lints docker/Dockerfile
# Each then proves its checker fails on the deliberately broken files in testdata/, each for the
# reason it was broken.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# Runs a checker that must fail on `file`, and must say each of the expected phrases.
expect_rejected() {
  local script=$1 file=$2 output
  shift 2
  if output=$(node "$here/$script" "$file" 2>&1); then
    fail "$script accepted the broken $file"
    return
  fi
  local phrase
  for phrase in "$@"; do
    grep -qF -- "$phrase" <<<"$output" || fail "$script rejected $file without saying '$phrase':"$'\n'"$output"
  done
}

command -v node >/dev/null || { echo "node is missing: run tools/setup-deps.sh" >&2; exit 1; }
[[ -d "$here/node_modules" ]] || { echo "$here/node_modules is missing: run tools/setup-deps.sh (npm ci there)" >&2; exit 1; }

case "${1:-}" in
  manifests)
    command -v kubectl >/dev/null || { echo "kubectl is missing: run tools/setup-deps.sh" >&2; exit 1; }
    # Components and `labels` need kustomize v5 (kubectl 1.27 or newer).
    kustomize=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\)\..*/\1/p')
    [[ -n "$kustomize" && "$kustomize" -ge 5 ]] || {
      echo "kubectl's kustomize is older than v5 ($(kubectl version --client 2>&1 | tr '\n' ' ')): install kubectl 1.27+" >&2
      exit 1
    }
    rendered=$(mktemp -d)
    trap 'rm -rf "$rendered"' EXIT
    overlays=("$repo"/deploy/k8s/overlays/*/)
    for overlay in "${overlays[@]}"; do
      name=$(basename "$overlay")
      kubectl kustomize "$overlay" >"$rendered/$name.yaml" || fail "kubectl kustomize $overlay"
    done
    # One run for all (the type check dominates its time): the rendered overlays must pass, each
    # fixture must fail for its reason.
    fixtures=("$here"/testdata/{misspelt-field,wrong-type,missing-required,bad-service-monitor,unknown-kind,broken-references,broken-internal-plane,broken-public-tls}.yaml)
    report=$(node "$here/validate-manifests.mjs" "$rendered"/*.yaml "${fixtures[@]}" 2>&1 || true)
    grep -F -- "$rendered/" <<<"$report" && fail "the rendered overlays are invalid"
    expect_line() {
      grep -F -- "$here/testdata/$1.yaml" <<<"$report" | grep -qF -- "$2" ||
        fail "validate-manifests.mjs did not reject testdata/$1.yaml with '$2':"$'\n'"$report"
    }
    expect_line misspelt-field "'\"livenesProbe\"' does not exist"
    expect_line wrong-type "ports/0/port must be integer"
    expect_line missing-required "must have required property scaleTargetRef"
    expect_line bad-service-monitor "endpoints/0/interval must be string"
    expect_line unknown-kind "no schema for kind Deploymnet"
    expect_line broken-references "names Service decode, which is not headless"
    expect_line broken-references "Service decode has no port 50099"
    expect_line broken-references "--http-listen port 8080 is not the http port 8000"
    expect_line broken-references "Service decode has no port named metrics"
    expect_line broken-references "serves the Pods metric indexcache_kv_blocks_utilisation"
    expect_line broken-internal-plane "Deployment decode: container decode's --cluster-token-file /run/secrets/indexcache/cluster-token lies on no mounted Secret volume"
    expect_line broken-internal-plane "Deployment prefill: container prefill runs --insecure-internal-plane"
    expect_line broken-internal-plane "read their cluster token from different Secrets: cluster-token (router), another-token (prefill)"
    expect_line broken-internal-plane "--internal-listen port 50099 is not the internal port 50055"
    expect_line broken-internal-plane "--router router:50051 leads to the router's port grpc, not its internal port"
    expect_line broken-internal-plane "NetworkPolicy router: lets others than the cluster's own pods reach internal port internal"
    expect_line broken-internal-plane "Deployment router: its NetworkPolicies close its public port http"
    expect_line broken-internal-plane "NetworkPolicy decode: lets others than the cluster's own pods reach internal port grpc"
    expect_line broken-internal-plane "Deployment prefill: no NetworkPolicy restricts who reaches its internal port grpc"
    expect_line broken-public-tls "Deployment router-without-key: container router needs one --tls-cert-file and one --tls-key-file, has 1 and 0"
    expect_line broken-public-tls "Deployment router-unmounted: container router's --tls-cert-file /etc/tls/tls.crt lies on no mounted Secret volume"
    expect_line broken-public-tls "Deployment router-unmounted: livenessProbe asks public port grpc, which serves TLS"
    expect_line broken-public-tls "Deployment router-two-secrets: container router reads its TLS certificate and key from different Secrets: public-tls, other-tls"
    tail -n 1 <<<"$report"
    checked="${#overlays[@]} overlays"
    ;;
  dockerfiles)
    node "$here/lint-dockerfiles.mjs" "$repo/docker/Dockerfile" || fail "docker/Dockerfile has lint problems"
    expect_rejected lint-dockerfiles.mjs "$here/testdata/Dockerfile.broken" \
      "There can only be one CMD" "not pinned to a tag or digest" "non-root numeric USER" \
      "exec-form ENTRYPOINT" "runs /usr/local/bin/indexcache-router, not /usr/local/bin/indexcache-prefill-worker" \
      "the ports contract says [50052,9401]" "no build target 'decode-worker'" \
      "target 'router': its CMD passes no --cluster-token-file" \
      "target 'prefill-worker': its CMD runs --insecure-internal-plane"
    checked="docker/Dockerfile"
    ;;
  *)
    echo "usage: $0 manifests|dockerfiles" >&2
    exit 2
    ;;
esac
if [[ $failures -gt 0 ]]; then
  echo "$failures deployment check(s) failed" >&2
  exit 1
fi
echo "deployment checks passed: $checked, and every broken fixture rejected"
