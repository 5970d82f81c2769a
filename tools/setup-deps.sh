#!/usr/bin/env bash
# Installs every build and test dependency from Debian 12's packages, and the pinned npm packages of
# the deployment checks (deploy/validate) and of the tests that drive the services with outside
# clients (tests/node). Idempotent: what is present is skipped, and nothing is fetched when
# everything is there. `--build-only` installs the build's packages alone (the Docker
# build stage uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libre2-dev prometheus-cpp-dev nlohmann-json3-dev libisal-dev zlib1g-dev libssl-dev
  libboost-dev libboost-system-dev
  libgtest-dev libgmock-dev libopenblas-openmp-dev
  python3 python3-numpy python3-grpcio python3-protobuf python3-venv python3-pip python3-setuptools
  prometheus
)

sudo_cmd=()
[[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
apt_updated=false
apt_install() {
  echo "setup-deps: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! $apt_updated; then
    "${sudo_cmd[@]}" apt-get update -qq
    apt_updated=true
  fi
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-deps: all ${#packages[@]} packages present"
else
  apt_install "${missing[@]}"
fi
[[ "${1:-}" == "--build-only" ]] && exit 0

# The deployment checks (deploy/validate/run-checks.sh): node runs the pinned validators and kubectl
# renders the kustomize overlays. kubectl must carry kustomize v5 (kubectl 1.27 or newer), which
# Debian 12's own kubernetes-client (1.20) does not: the `kubectl` package of the Kubernetes apt
# repository, as this project's machine image has it, does.
tools=()
{ command -v node && command -v npm; } >/dev/null || tools+=(nodejs npm)
if ! command -v kubectl >/dev/null; then
  if apt-cache show kubectl >/dev/null 2>&1; then
    tools+=(kubectl)
  else
    echo "setup-deps: no kubectl in the apt sources; the deploy_manifests test needs kubectl 1.27+" >&2
  fi
fi
[[ ${#tools[@]} -eq 0 ]] || apt_install "${tools[@]}"

# npm ci only when the lock file changed since the last install: the deployment validators, and the
# clients tests/node drives the services with (the official `openai` package, gRPC's own Node.js
# client with the reflection and health protos).
for dir in deploy/validate tests/node; do
  stamp=$dir/node_modules/.installed-package-lock.json
  if ! cmp -s "$dir/package-lock.json" "$stamp"; then
    echo "setup-deps: npm ci in $dir"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    cp "$dir/package-lock.json" "$stamp"
  else
    echo "setup-deps: $dir's npm packages present"
  fi
done
