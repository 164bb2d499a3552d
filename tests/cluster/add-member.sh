#!/usr/bin/env bash
# Adds one more member (the next free mN) to the running cluster of up.sh and joins it.
#
#   tests/cluster/add-member.sh [prefix]
# Storage pools and networks that already exist are created on the new member by the join
# itself, from their global config (dir pools and bridges need no member-specific value).
source "$(dirname "$0")/lib.sh"

[ -s "$base/state" ] || die "no cluster at $base; run tests/cluster/up.sh $prefix first"
source "$base/state"
for i in 1 2 3 4 5 6 7 8 9; do
  [ -e "$base/m$i" ] || { m=m$i; break; }
done
[ -n "${m:-}" ] || die "no free member slot under $base"

start_holder "$m"
wire_member "$m"
start_daemon "$m"
join_member "$m"
write_state
log "$m joined"
incus_on m1 cluster list -f csv -c nurs >&2
cat "$base/state"
