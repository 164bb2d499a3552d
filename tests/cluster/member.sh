#!/usr/bin/env bash
# Takes one member of the cluster of up.sh offline and back.
#
#   tests/cluster/member.sh PREFIX stop|start|pause|resume mN
#   tests/cluster/member.sh PREFIX wait-status mN Online|Offline
# stop:   `incus admin shutdown` (its instances stop too); start: a new incusd, waits until
#         the cluster sees it ONLINE again.
# pause:  SIGSTOP of its incusd (instances keep running, the member stops answering
#         heartbeats); resume: SIGCONT.
# After stop/pause the other members mark it OFFLINE once cluster.offline_threshold (11 s)
# passes without a heartbeat; `wait-status` waits for that.
action=${2:-}; m=${3:-}; want=${4:-Online}
source "$(dirname "$0")/lib.sh"
[ -s "$base/state" ] || die "no cluster at $base"
[ -d "$base/$m" ] || die "no member '$m' under $base"
daemon=$(pidfile "$base/$m/daemon.pid")

# Asks another member for $m's status until it is $1 (Online/Offline), up to 120 s. Every
# answer is appended to $base/$m/status.log (seen once: ~165 s until ONLINE after a resume on
# a loaded machine; the log shows whether the other member answered meanwhile).
wait_status() {
  local want=$1 other s="" start=$SECONDS
  for other in m1 m2 m3 m4 m5 m6; do [ "$other" != "$m" ] && [ -d "$base/$other" ] && break; done
  while ((SECONDS - start < 120)); do
    s=$(client 5 "$other" query "/1.0/cluster/members/$m" 2>>"$base/$m/status.log" \
      | sed -n 's/.*"status": "\([A-Za-z]*\)".*/\1/p' | head -1) || true
    echo "$(date -u +%T) $other says $m is ${s:-<no answer>}" >>"$base/$m/status.log"
    if [ "${s,,}" = "${want,,}" ]; then
      log "$m is $s ($((SECONDS - start)) s)"
      return 0
    fi
    sleep 0.5
  done
  die "$m did not become $want within 120 s (last seen: ${s:-no answer}); see $base/$m/status.log"
}

case $action in
  stop)
    client 30 "$m" admin shutdown --timeout 20 >/dev/null 2>&1 || true
    for _ in $(seq 50); do alive "$daemon" || break; sleep 0.2; done
    alive "$daemon" && die "incusd of $m (pid $daemon) still runs after shutdown"
    log "$m shut down" ;;
  start)
    alive "$daemon" && die "incusd of $m already runs (pid $daemon)"
    start_daemon "$m"
    write_state
    wait_status Online ;;
  pause) kill -STOP "$daemon"; log "$m paused (pid $daemon)" ;;
  resume) kill -CONT "$daemon"; log "$m resumed" ; wait_status Online ;;
  wait-status) wait_status "$want" ;;
  *) die "usage: member.sh PREFIX stop|start|pause|resume|wait-status mN [Online|Offline]" ;;
esac
