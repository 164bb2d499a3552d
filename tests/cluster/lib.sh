# Shared by up.sh, add-member.sh, member.sh, down.sh. Sourced, not run.
#
# Layout under $base (/var/tmp/atlas-cluster/<prefix>):
#   state            shell KEY=VALUE lines for tests (sourced here, parsed by the Rust test)
#   hub.pid          holder of the hub network namespace (bridge br0, 198.51.100.1/24)
#   <m>/holder.pid   holder of member <m>'s mount + network namespaces
#   <m>/daemon.pid   that member's incusd
#   <m>/var          its INCUS_DIR (socket <m>/var/unix.socket)
# Every client call runs inside a namespace of ours (`in_ns`): a member's address exists only
# there, and the namespaces have no default route, so nothing can leave the machine.

set -euo pipefail

prefix=${ATLAS_CLUSTER_PREFIX:-${1:-ac}}
case $prefix in
  *[!a-z0-9-]* | "") echo "prefix must be [a-z0-9-]+, got '$prefix'" >&2; exit 2 ;;
esac
root=${ATLAS_CLUSTER_ROOT:-/var/tmp/atlas-cluster}
base=$root/$prefix
# Addresses of the hub bridge; they exist only inside our namespaces (TEST-NET-2).
net=${ATLAS_CLUSTER_NET:-198.51.100}
incusd=${INCUSD:-/usr/libexec/incus/incusd}
export INCUS_CONF=$base/client-conf

log() { echo "cluster[$prefix]: $*" >&2; }
die() { log "$*"; exit 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pidfile() { cat "$1" 2>/dev/null || true; }

# Waits up to $2 tenths of a second for file $1 to be non-empty.
wait_file() {
  local i
  for ((i = 0; i < $2; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

member_index() { echo "${1#m}"; }
member_addr() { echo "$net.1$(member_index "$1")"; }

# Runs the incus client as member $1 (its socket, inside its network namespace).
in_member() {
  local m=$1; shift
  INCUS_DIR=$base/$m/var nsenter -t "$(pidfile "$base/$m/holder.pid")" -n -- "$@"
}
incus_on() { local m=$1; shift; in_member "$m" incus "$@"; }

# Starts a holder process for a new mount + network namespace of member $1. Inside, /sys is
# remounted so it shows this namespace's interfaces, and the cgroup tree is moved back in.
start_holder() {
  local m=$1 dir=$base/$1
  mkdir -p "$dir/var" "$dir/.cg"
  rm -f "$dir/holder.pid"
  setsid unshare -m -n --propagation private sh -c '
    set -e
    mount --rbind /sys/fs/cgroup "$1/.cg"
    mount -t sysfs sysfs /sys
    mount --move "$1/.cg" /sys/fs/cgroup
    ip link set lo up
    echo $$ > "$1/holder.pid"
    exec sleep infinity' holder "$dir" </dev/null >"$dir/holder.log" 2>&1 &
  wait_file "$dir/holder.pid" 50 || die "holder of $m did not start; see $dir/holder.log"
}

# Connects member $1 to the hub bridge with its address.
wire_member() {
  local m=$1 hub holder idx
  hub=$(pidfile "$base/hub.pid")
  holder=$(pidfile "$base/$m/holder.pid")
  idx=$(member_index "$m")
  nsenter -t "$hub" -n ip link add "v$idx" type veth peer name eth0 netns "$holder"
  nsenter -t "$hub" -n ip link set "v$idx" master br0 up
  nsenter -t "$holder" -n ip addr add "$(member_addr "$m")/24" dev eth0
  nsenter -t "$holder" -n ip link set eth0 up
}

# Starts (or restarts) the incusd of member $1 and waits until it answers.
start_daemon() {
  local m=$1 dir=$base/$1 holder
  holder=$(pidfile "$dir/holder.pid")
  alive "$holder" || die "namespace holder of $m is gone"
  INCUS_DIR=$dir/var setsid nsenter -t "$holder" -n -m -- \
    "$incusd" --group root --logfile "$dir/incusd.log" </dev/null >>"$dir/incusd.out" 2>&1 &
  echo $! >"$dir/daemon.pid"
  in_member "$m" incus admin waitready --timeout 60 \
    || die "incusd of $m not ready; see $dir/incusd.log"
}

write_state() {
  local m members="" tmp=$base/state.tmp
  for m in m1 m2 m3 m4 m5 m6 m7 m8 m9; do
    [ -s "$base/$m/holder.pid" ] && members="$members $m"
  done
  {
    echo "PREFIX=$prefix"
    echo "BASE=$base"
    echo "HUB_PID=$(pidfile "$base/hub.pid")"
    echo "HUB_ADDR=$net.1"
    echo "MEMBERS=\"${members# }\""
    for m in $members; do
      local u=${m^^}
      echo "${u}_ADDR=$(member_addr "$m")"
      echo "${u}_DIR=$base/$m/var"
      echo "${u}_SOCKET=$base/$m/var/unix.socket"
      echo "${u}_HOLDER_PID=$(pidfile "$base/$m/holder.pid")"
      echo "${u}_DAEMON_PID=$(pidfile "$base/$m/daemon.pid")"
    done
  } >"$tmp"
  mv "$tmp" "$base/state"
}

# Joins member $1 to the cluster through member m1.
join_member() {
  local m=$1 token
  token=$(incus_on m1 cluster add "$m" --quiet)
  in_member "$m" incus admin init --preseed <<YAML >/dev/null
cluster:
  enabled: true
  server_name: $m
  server_address: $(member_addr "$m"):8443
  cluster_token: $token
YAML
}

# `client SECONDS MEMBER ARGS...`: the incus client of a member with a time limit (teardown
# must not hang on a paused or dying daemon).
client() {
  local t=$1 m=$2; shift 2
  timeout "$t" env INCUS_DIR="$base/$m/var" \
    nsenter -t "$(pidfile "$base/$m/holder.pid")" -n -- incus "$@"
}
