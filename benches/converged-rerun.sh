#!/usr/bin/env bash
# Converged re-run time of the whole stack (issue #8: under 2 s): installs the demo stack of
# tests/main.sh once (fixture images through --registry-mirror), then times `plan` and
# `install --yes` on the converged host N times each and prints best and median wall time.
# Needs tests/start-services.sh, tests/fixtures/build-images.sh and tests/build-static.sh first.
# Usage: benches/converged-rerun.sh [RUNS]   (default 5); leaves the stack installed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bin=${BENCH_ATLAS:-target/x86_64-unknown-linux-musl/release/atlas-install}
conf=${ATLAS_DEMO_CONFIG:-./atlas-demo.toml}
[ -x "$bin" ] || { echo "no $bin: run tests/build-static.sh" >&2; exit 1; }
[ -f "$conf" ] || { echo "no $conf: run tests/main.sh once (it writes the demo config)" >&2; exit 1; }
args=(--yes --ignore-preflight --registry-mirror 127.0.0.1:5000)
"$bin" -c "$conf" --progress none install "${args[@]}" >/dev/null
time_of() { # command... -> seconds
  local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc
}
report() { # name times...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{a[NR]=$1} END {printf "%-28s best %.2f s  median %.2f s  (%d runs)\n", n, a[1], a[int((NR+1)/2)], NR}'
}
plan=(); inst=()
for _ in $(seq "$runs"); do
  plan+=("$(time_of "$bin" -c "$conf" --progress none plan --detailed-exitcode)")
  inst+=("$(time_of "$bin" -c "$conf" --progress none install "${args[@]}")")
done
out=$("$bin" -c "$conf" --progress plain install "${args[@]}" 2>&1 | tail -n1)
report "plan (converged)" "${plan[@]}"
report "install --yes (converged)" "${inst[@]}"
echo "last re-run said: $out"
