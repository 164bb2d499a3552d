#!/usr/bin/env bash
# The test command (README): prepares a fresh Debian 12 host (packages, incusd, local
# registry), runs every test of the workspace against the real daemons and tools, then
# builds the static release binary and checks it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-host.sh
bash tests/start-services.sh
# Stand-in upstream images (real Debian binaries, or named stand-ins) in the local registry,
# each started once in an isolated namespace to prove it serves.
bash tests/fixtures/build-images.sh
bash tests/fixtures/check-images.sh
# A real 3-member Incus cluster, each member an incusd in its own network namespace
# (tests/cluster/README.md), for the cluster test; removed when this script ends.
bash tests/cluster/down.sh ci9 >/dev/null 2>&1 || true
bash tests/cluster/up.sh ci9 >/dev/null
trap 'bash tests/cluster/down.sh ci9 >/dev/null 2>&1 || true' EXIT
export ATLAS_TEST_CLUSTER=/var/tmp/atlas-cluster/ci9/state
# A missing tool or daemon fails the tests instead of skipping them.
export ATLAS_TEST_REQUIRE_ALL=1
# The tests must leave the host's Incus as they found it, failed ones included (server
# config, trust store, networks, projects, pools, default-project images and profiles,
# volumes: tests/incus-state.sh), also beside the README demo or any other install.
state=$(mktemp -d)
trap 'bash tests/cluster/down.sh ci9 >/dev/null 2>&1 || true; rm -rf "$state"' EXIT
bash tests/incus-state.sh >"$state/before"
# One test at a time per binary: the tests share one incusd, and its bridge creation races
# with veths that other tests' containers remove (a flaky "Device ... does not exist").
rc=0
cargo test --workspace --locked -- --test-threads=1 || rc=$?
bash tests/incus-state.sh >"$state/after"
if ! diff -u "$state/before" "$state/after"; then
  echo "run-tests.sh: the tests left the host's Incus changed (- before, + after)" >&2
  exit 1
fi
[ "$rc" = 0 ] || exit "$rc"
bash tests/build-static.sh >/dev/null
