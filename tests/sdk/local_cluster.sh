# Sourced by the SDK install tests: a scratch folder `work` removed on exit, and start_cluster BUILD
# SOURCE, which runs `indexcache cluster up` on the tiny model in the background (stopped on exit) and
# sets `router` to its address once it is ready.
work=$(mktemp -d)
cluster=
cleanup() {
  if [[ -n $cluster ]]; then
    kill -TERM "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

start_cluster() {
  "$1/tools/indexcache" cluster up --model "$2/models/glm-dsa-tiny-random" --threads 1 >"$work/cluster.out" 2>/dev/null &
  cluster=$!
  for _ in $(seq 1200); do
    grep -q '^ready ' "$work/cluster.out" && break
    sleep 0.1
  done
  router=$(awk '/^ready /{print $2}' "$work/cluster.out")
  [[ -n $router ]] || { echo "FAIL: the cluster did not start" >&2; exit 1; }
}
