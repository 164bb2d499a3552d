#!/usr/bin/env bash
# Start the daemons the tests talk to, without systemd: incusd (unix socket) and a
# CNCF distribution registry on 127.0.0.1:5000 with no auth. Idempotent.
# Run tests/setup-host.sh first.
set -euo pipefail

state=${ATLAS_TEST_STATE:-/var/tmp/atlas-test}
mkdir -p "$state"

start_incus() {
  if incus admin waitready --timeout 1 >/dev/null 2>&1; then return 0; fi
  # cgroup2 and /dev/net/tun are what incusd needs from a bare container host
  setsid /usr/libexec/incus/incusd --group root --logfile "$state/incusd.log" \
    </dev/null >>"$state/incusd.out" 2>&1 &
  incus admin waitready --timeout 60
  # A storage pool and external bridge make the host usable like an initialised one;
  # tests create their own pools, projects and networks beside these.
  incus storage show default >/dev/null 2>&1 || incus storage create default dir >/dev/null
  if ! incus network show incusbr0 >/dev/null 2>&1; then
    incus network create incusbr0 ipv4.address=10.199.0.1/24 ipv4.nat=false ipv6.address=none >/dev/null
  fi
  if ! incus profile device get default root pool >/dev/null 2>&1; then
    incus profile device add default root disk path=/ pool=default >/dev/null
  fi
}

start_registry() {
  local cfg="$state/registry.yml"
  if curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; then return 0; fi
  mkdir -p "$state/registry"
  cat > "$cfg" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $state/registry}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:5000
YML
  setsid docker-registry serve "$cfg" </dev/null >>"$state/registry.log" 2>&1 &
  for _ in $(seq 50); do
    curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && return 0
    sleep 0.2
  done
  echo "start-services.sh: registry did not come up; see $state/registry.log" >&2
  exit 1
}

start_incus
start_registry
echo "start-services.sh: incusd and registry (127.0.0.1:5000) running; logs in $state"
