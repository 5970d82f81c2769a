#!/usr/bin/env bash
# Prints, one a line, the packages (dpkg) owning the shared libraries that the given binaries load:
# what a runtime image must install to run them, and nothing more. Fails when a library belongs to no
# package, rather than let an image ship without it.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 BINARY..." >&2; exit 2; }

# The package owning `lib`. ldd reports /lib/... on merged-/usr systems where dpkg recorded /usr/lib/...
# or the other way round, and CUDA libraries through the /usr/local/cuda symlink: try each spelling.
owner() {
  local lib=$1 real candidate found
  real=$(readlink -f "$lib")
  for candidate in "$lib" "$real" "${lib#/usr}" "/usr$lib" "${real#/usr}" "/usr$real"; do
    # "libgrpc++1.51:amd64: /usr/lib/x86_64-linux-gnu/libgrpc++.so.1.51" → libgrpc++1.51
    if found=$(dpkg -S "$candidate" 2>/dev/null); then
      echo "${found%%:*}"
      return 0
    fi
  done
  return 1
}

libraries=$(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
missing=$(ldd "$@" | awk '$2 == "=>" && $3 == "not" { print $1 }' | sort -u)
if [[ -n "$missing" ]]; then
  echo "runtime-packages: libraries not found: $missing" >&2
  exit 1
fi
packages=()
for lib in $libraries; do
  package=$(owner "$lib") || { echo "runtime-packages: no package owns $lib" >&2; exit 1; }
  packages+=("$package")
done
printf '%s\n' "${packages[@]}" | sort -u
