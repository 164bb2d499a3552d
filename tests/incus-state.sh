#!/usr/bin/env bash
# Prints what the host's Incus holds that a test must leave as it found it, one sorted line
# per object: server config, trusted certificates, managed networks, projects (with their
# config), storage pools, the default project's profiles and images, and the storage volumes
# of every project.
# tests/run-tests.sh compares the output before and after the suite; the integration tests'
# `common::hermetic::HostState` runs it around single tests. Read-only (GETs only).
set -euo pipefail

q() { incus query "$1"; }
# Secrets stored as config keys (an Atlas project's user.atlas.secret.*) are shown by size
# only: this output ends up in test logs.
jqr() {
  jq -c -S "def redact: with_entries(if (.key | test(\"secret|password|token|private|-key$\")) then .value = \"<redacted, \\(.value | length) bytes>\" else . end); $1"
}

{
  q /1.0 | jqr '.config // {} | redact | to_entries[] | {server: .key, value: .value}'
  q '/1.0/certificates?recursion=1' \
    | jq -c -S '.[] | {certificate: .fingerprint, type, name, restricted, projects}'
  q '/1.0/networks?recursion=1' \
    | jqr '.[] | select(.managed) | {network: .name, type, config: (.config | redact), description}'
  q '/1.0/projects?recursion=1' | jqr '.[] | {project: .name, config: (.config | redact), description}'
  q '/1.0/profiles?recursion=1&project=default' \
    | jqr '.[] | {profile: .name, config: (.config | redact), devices, description}'
  q '/1.0/images?recursion=1&project=default' \
    | jq -c -S '.[] | {image: .fingerprint, aliases: [.aliases[]?.name] | sort}'
  q '/1.0/storage-pools?recursion=1' | jq -c -S '.[] | {pool: .name, driver, config}'
  for pool in $(q /1.0/storage-pools | jq -r '.[] | sub("^/1.0/storage-pools/"; "")'); do
    q "/1.0/storage-pools/$pool/volumes?all-projects=true&recursion=1" \
      | jq -c -S --arg pool "$pool" '.[] | {volume: .name, pool: $pool, project, type}'
  done
} | LC_ALL=C sort
