#!/usr/bin/env bash
# Tears down the cluster of up.sh completely: daemons, everything in its namespaces
# (dnsmasq, containers, forkproxy), the namespaces themselves (with their veths, bridges and
# nft tables), leftover container cgroups, and the directory. Idempotent.
#
#   tests/cluster/down.sh [prefix]
# Only PIDs recorded by up.sh, or processes inside namespaces it created, are killed.
source "$(dirname "$0")/lib.sh"

[ -d "$base" ] || { log "nothing to tear down at $base"; exit 0; }

members=$(cd "$base" && ls -d m[0-9] 2>/dev/null || true)
holders=()
for m in $members; do
  h=$(pidfile "$base/$m/holder.pid")
  alive "$h" && holders+=("$h")
done
hub=$(pidfile "$base/hub.pid")

# Instances first, while the daemons still answer, so their cgroups and mounts go cleanly.
for m in $members; do
  d=$(pidfile "$base/$m/daemon.pid")
  alive "$d" || continue
  kill -CONT "$d" 2>/dev/null || true # a member paused by member.sh freeze
done
for m in $members; do
  d=$(pidfile "$base/$m/daemon.pid")
  alive "$d" || continue
  for p in $(client 10 "$m" project list -f csv -c n 2>/dev/null | sed 's/ (current)//'); do
    for i in $(client 10 "$m" list --project "$p" -f csv -c nL 2>/dev/null \
        | awk -F, -v m="$m" '$2 == m {print $1}'); do
      client 30 "$m" delete -f --project "$p" "$i" >/dev/null 2>&1 || true
    done
  done
done
for m in $members; do
  alive "$(pidfile "$base/$m/daemon.pid")" || continue
  client 20 "$m" admin shutdown --timeout 15 >/dev/null 2>&1 || true
done
for m in $members; do
  d=$(pidfile "$base/$m/daemon.pid")
  if alive "$d" && grep -q incusd "/proc/$d/cmdline" 2>/dev/null; then kill -9 "$d" || true; fi
done

# Whatever still runs inside one of our network namespaces (dnsmasq survives a shutdown,
# container payloads, forkproxy) is ours by construction.
ours=()
for h in "${holders[@]}" $hub; do
  alive "$h" && ours+=("$(readlink "/proc/$h/ns/net")")
done
if [ ${#ours[@]} -gt 0 ]; then
  for _ in 1 2 3; do
    victims=()
    for p in /proc/[0-9]*; do
      pid=${p#/proc/}
      ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
      for o in "${ours[@]}"; do
        if [ "$ns" = "$o" ] && [ "$pid" != "$$" ]; then victims+=("$pid"); fi
      done
    done
    [ ${#victims[@]} -eq 0 ] && break
    kill -9 "${victims[@]}" 2>/dev/null || true
    sleep 0.3
  done
fi

# Container cgroups are flat (lxc.payload.<name>, lxc.monitor.<name>); tests name their
# instances with the prefix, so only those are ours.
for c in /sys/fs/cgroup/*/lxc.payload."$prefix"* /sys/fs/cgroup/*/lxc.monitor."$prefix"* \
    /sys/fs/cgroup/lxc.payload."$prefix"* /sys/fs/cgroup/lxc.monitor."$prefix"*; do
  [ -d "$c" ] || continue
  find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# Mounts can only be in the namespaces we just emptied; refuse to delete through a live one.
if grep -q " $base" /proc/self/mountinfo; then
  die "something is still mounted under $base (see /proc/self/mountinfo); not deleting it"
fi
rm -rf "$base"
log "down"
