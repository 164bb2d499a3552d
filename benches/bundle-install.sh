#!/usr/bin/env bash
# Full-stack install from a bundle (issue #8, item 3), the offline way in, measured end to end:
#   1. `bundle create` from the fixture registry (once; timed);
#   2. N cold installs: the demo project destroyed with its volumes (its images go with it),
#      page cache dropped, then `install --yes --bundle FILE` in a network namespace with no
#      interface up (`unshare --net`), so nothing but the Incus socket is reachable;
#   3. on the converged host: `plan` and `install --bundle` again, N times each.
# Reports wall time, user+sys CPU and peak RSS of atlas-install (/usr/bin/time), and the CPU
# incusd spent meanwhile (it unpacks the images and creates everything). Best and median.
#
# Uses the demo config of tests/main.sh (project atlas-demo): it replaces a running demo
# stack. Needs tests/start-services.sh, tests/fixtures/build-images.sh, tests/build-static.sh.
# Usage: benches/bundle-install.sh [RUNS]   (default 3); leaves the demo stack installed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=${BENCH_ATLAS:-target/x86_64-unknown-linux-musl/release/atlas-install}
conf=${ATLAS_DEMO_CONFIG:-./atlas-demo.toml}
work=${BENCH_DIR:-/var/tmp/atlas-bench/bundle}
[ -x "$bin" ] || { echo "no $bin: run tests/build-static.sh" >&2; exit 1; }
[ -f "$conf" ] || { echo "no $conf: run tests/main.sh once (it writes the demo config)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (tests/setup-host.sh installs it)" >&2; exit 1; }
mkdir -p "$work"
bundle=$work/atlas.bundle
atlas() { "$bin" -c "$conf" --progress none "$@"; }

incusd_ticks() { # user+sys clock ticks of incusd so far
  local pid; pid=$(pgrep -xo incusd)
  awk '{print $14 + $15}' "/proc/$pid/stat"
}
hz=$(getconf CLK_TCK)

measure() { # label command... -> "label wall cpu rss_kib incusd_cpu" on stdout
  local label=$1; shift
  local t0 t1 line
  t0=$(incusd_ticks)
  line=$(/usr/bin/time -f '%e %U %S %M' "$@" 2>&1 >/dev/null | tail -n1) || {
    echo "bundle-install.sh: $label failed" >&2; "$@" >&2 || true; exit 1; }
  t1=$(incusd_ticks)
  read -r wall user sys rss <<<"$line"
  printf '%s %s %s %s %s\n' "$label" "$wall" "$(echo "$user + $sys" | bc)" "$rss" \
    "$(echo "scale=2; ($t1 - $t0) / $hz" | bc)"
}

cold() {
  atlas destroy --delete-volumes --yes >/dev/null 2>&1 || true
  sync; echo 3 > /proc/sys/vm/drop_caches
  measure "install --bundle (cold, no network)" \
    unshare --net -- "$bin" -c "$conf" --progress none install --yes --ignore-preflight --allow-unsigned --bundle "$bundle"
}

results=()
results+=("$(measure "bundle create" "$bin" -c "$conf" --progress none bundle create --out "$bundle" --registry-mirror 127.0.0.1:5000 --download-mirror file:///var/tmp/atlas-test/downloads --yes)")
size=$(stat -c %s "$bundle")
for i in $(seq "$runs"); do
  r=$(cold); echo "run $i: $r" >&2; results+=("$r")
done
for i in $(seq "$runs"); do
  r=$(measure "install --bundle (converged)" unshare --net -- "$bin" -c "$conf" --progress none install --yes --ignore-preflight --allow-unsigned --bundle "$bundle")
  echo "run $i: $r" >&2; results+=("$r")
  r=$(measure "plan (converged)" "$bin" -c "$conf" --progress none plan --detailed-exitcode)
  echo "run $i: $r" >&2; results+=("$r")
done
atlas status >/dev/null || { echo "bundle-install.sh: the stack is not healthy at the end" >&2; exit 1; }

echo
echo "bundle: $(numfmt --to=iec "$size") ($size bytes), $("$bin" bundle inspect "$bundle" 2>/dev/null | grep -c 'sha256:' || true) digests listed by bundle inspect"
echo "| step | runs | wall s best | wall s median | CPU s (best run) | peak RSS MiB (best run) | incusd CPU s (best run) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for label in "bundle create" "install --bundle (cold, no network)" "install --bundle (converged)" "plan (converged)"; do
  rows=$(printf '%s\n' "${results[@]}" | grep -F "$label " | sed "s/^$label //" | sort -n)
  n=$(wc -l <<<"$rows")
  read -r wall cpu rss inc <<<"$(head -n1 <<<"$rows")"
  med=$(sed -n "$(( (n + 1) / 2 ))p" <<<"$rows" | cut -d' ' -f1)
  printf '| %s | %d | %.2f | %.2f | %.2f | %.0f | %.2f |\n' "$label" "$n" "$wall" "$med" "$cpu" "$(echo "$rss / 1024" | bc)" "$inc"
done
