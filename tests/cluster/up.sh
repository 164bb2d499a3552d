#!/usr/bin/env bash
# Brings up a 3-member Incus cluster on this machine, each member its own incusd in its own
# mount + network namespace, joined over a bridge in a "hub" namespace. Nothing here is
# reachable from, or routes to, the host's network. Idempotent: a running cluster is kept.
#
#   tests/cluster/up.sh [prefix]       (default prefix "ac"; or ATLAS_CLUSTER_PREFIX)
#
# Writes /var/tmp/atlas-cluster/<prefix>/state (KEY=VALUE: sockets, PIDs, addresses).
# The cluster starts empty: no storage pool, no network (tests create them the cluster way).
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root"
[ -x "$incusd" ] || die "no incusd at $incusd (install incus-base, see tests/setup-host.sh)"
if ip -4 addr | grep -q "inet $net\."; then
  die "the host already uses $net.0/24; pick another range with ATLAS_CLUSTER_NET"
fi

if [ -s "$base/state" ]; then
  source "$base/state"
  ok=1
  alive "$HUB_PID" || ok=0
  for m in $MEMBERS; do
    alive "$(pidfile "$base/$m/daemon.pid")" || ok=0
  done
  if [ $ok = 1 ]; then log "already up ($base/state)"; cat "$base/state"; exit 0; fi
  die "a partial cluster exists at $base; run tests/cluster/down.sh $prefix first"
fi
[ -e "$base" ] && die "$base exists without a state file; run tests/cluster/down.sh $prefix first"

start=$(date +%s%N)
mkdir -p "$base" "$INCUS_CONF"
# Traversable, not listable: the members' containers run as unprivileged root (uid 1000000),
# and LXC refuses to start them unless every directory above their rootfs grants it x. The
# client's config and key stay private.
chmod 711 "$base"
chmod 700 "$INCUS_CONF"

setsid unshare -n sh -c 'echo $$ > "$1"; exec sleep infinity' hub "$base/hub.pid" \
  </dev/null >/dev/null 2>&1 &
wait_file "$base/hub.pid" 50 || die "hub namespace did not start"
hub=$(pidfile "$base/hub.pid")
nsenter -t "$hub" -n ip link set lo up
nsenter -t "$hub" -n ip link add br0 type bridge
nsenter -t "$hub" -n ip addr add "$net.1/24" dev br0
nsenter -t "$hub" -n ip link set br0 up

for m in m1 m2 m3; do
  start_holder "$m"
  wire_member "$m"
  start_daemon "$m"
done

# The first member bootstraps the cluster. A short offline threshold lets failure tests see
# a stopped member go OFFLINE within seconds.
in_member m1 incus admin init --preseed <<YAML >/dev/null
config:
  core.https_address: $(member_addr m1):8443
cluster:
  server_name: m1
  enabled: true
YAML
incus_on m1 config set cluster.offline_threshold 11
for m in m2 m3; do join_member "$m"; done

write_state
log "up in $(( ($(date +%s%N) - start) / 1000000 )) ms"
incus_on m1 cluster list -f csv -c nurs >&2
cat "$base/state"
