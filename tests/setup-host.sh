#!/usr/bin/env bash
# Prepare a Debian 12 host (root, no systemd) for atlas-install development and tests:
# installs Incus from bookworm-backports, the OCI cross-check tools, the real service
# binaries used to validate rendered configs, musl-tools for the static build, the
# independent oracles of signatures and SBOMs: minisign (verifies what we sign) and golang-go
# (`go version -m` reads the Go build info we list), cyclonedx-python-lib in a venv (checks
# our CycloneDX documents against the official schema; python3-venv makes the venv), and
# step-ca's library for the step-ca fixture (tests/fixtures/step-ca; gcc and libc6-dev are
# only Recommends of golang-go, but cgo needs them).
# Idempotent: safe to run again. Starts nothing; see tests/start-services.sh.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh: must run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# The backports suite: copy the machine's own Debian source entry and change only the
# suite, so no mirror host is written anywhere.
add_backports() {
  local out=/etc/apt/sources.list.d/atlas-backports.sources
  [ -f "$out" ] && return 0
  local src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    # first stanza (the main archive), suites replaced
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1{print; exit}' "$src" \
      | sed -E 's/^Suites:.*/Suites: bookworm-backports/' > "$out"
  elif [ -f /etc/apt/sources.list ]; then
    grep -E '^deb [^ ]+ bookworm main' /etc/apt/sources.list | head -n1 \
      | sed -E 's/ bookworm main/ bookworm-backports main/' > /etc/apt/sources.list.d/atlas-backports.list
    out=/etc/apt/sources.list.d/atlas-backports.list
  fi
  [ -s "$out" ] || { echo "setup-host.sh: could not derive a backports source entry" >&2; exit 1; }
}

need_pkgs=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_pkgs+=("$1"); }
for p in dnsmasq-base skopeo umoci docker-registry prometheus prometheus-alertmanager \
         prometheus-node-exporter caddy mosquitto mosquitto-clients musl-tools iproute2 \
         nftables curl ca-certificates file jq busybox-static attr zip time bc libcap2-bin \
         minisign golang-go golang-github-smallstep-certificates-dev gcc libc6-dev nodejs \
         python3-venv; do
  want "$p"
done
# npm comes with some nodejs builds and is a package of its own in Debian's.
command -v npm >/dev/null 2>&1 || want npm

if ! dpkg -s incus-base >/dev/null 2>&1 || [ ${#need_pkgs[@]} -gt 0 ]; then
  add_backports
  apt-get update -qq
fi
if ! dpkg -s incus-base >/dev/null 2>&1; then
  apt-get install -y -qq -t bookworm-backports --no-install-recommends incus-base incus-client >/dev/null \
    || apt-get install -y -qq -t bookworm-backports --no-install-recommends incus-base >/dev/null
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  # policy-rc.d keeps the packages' init scripts from starting daemons we start ourselves
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
# LogQL is checked with Grafana's own grammar (the Loki stand-in cannot run queries): the
# versions pinned in tests/logql/package-lock.json, from the npm registry.
(cd "$(dirname "$0")/logql" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# CycloneDX documents are checked by cyclonedx-python-lib (tests/sbom/validate.py), the
# versions pinned in tests/sbom/requirements.txt, from the Python package registry, in a venv
# of Debian's python3 (not whatever python3 comes first on PATH). Made again when the pins
# change.
cdx_venv=/var/tmp/atlas-test/cdx-venv
cdx_req="$(dirname "$0")/sbom/requirements.txt"
if ! cmp -s "$cdx_req" "$cdx_venv/requirements.txt"; then
  rm -rf "$cdx_venv"
  mkdir -p "$(dirname "$cdx_venv")"
  /usr/bin/python3 -m venv "$cdx_venv"
  "$cdx_venv/bin/pip" install -q --disable-pip-version-check -r "$cdx_req"
  cp "$cdx_req" "$cdx_venv/requirements.txt"
fi

echo "setup-host.sh: host ready"
