#!/usr/bin/env bash
# The main job (README): prepare the host (Incus, the local registry, the tools), build the
# fixture "upstream" images into the local registry, build the static binary, then install the
# whole Atlas stack with it, health-gated, and print where each service can be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup-host.sh
bash tests/start-services.sh
bash tests/fixtures/build-images.sh
bin=$(bash tests/build-static.sh | tail -n1)
out=${ATLAS_RENDER_OUT:-./atlas-render}
"$bin" config validate
"$bin" render --out "$out"
echo "main.sh: rendered configuration for every service is in $out"

# The demo install: the fixture registry stands in for docker.io (--registry-mirror), a
# directory of downloads for Caddy's build service ([images] download_mirror), host
# ports on 127.0.0.1 only. The fixture Caddy is Debian's 2.6 (no PROXY protocol wrapper, no
# rate-limit plugin), and a host without systemd has a private / (no rslave mounts).
conf=${ATLAS_DEMO_CONFIG:-./atlas-demo.toml}
cat > "$conf" <<'TOML'
[incus]
project = "atlas-demo"
# The pool and bridge tests/start-services.sh creates.
storage_pool = "default"
external_network = "incusbr0"

[caddy]
listen_address = "127.0.0.1"
http_port = 8080
https_port = 8443
proxy_protocol = false

[caddy.rate_limit]
enabled = false

[mosquitto]
listen_address = "127.0.0.1"

[node_exporter]
follow_host_mounts = false

[instances.grafana01.web]
allowed_ip_range = ["127.0.0.1/32"]

# Caddy's plugin build stands in as Debian's caddy binary, laid out by build-images.sh.
[images]
download_mirror = "file:///var/tmp/atlas-test/downloads"
TOML
"$bin" -c "$conf" --progress plain install --yes --ignore-preflight --registry-mirror 127.0.0.1:5000
# status lists the endpoints, step-ca's root fingerprint and the command that trusts it.
"$bin" -c "$conf" status
cat <<TXT
main.sh: the Atlas stack runs in Incus project atlas-demo (config: $conf); the endpoints are listed above.
  Grafana:    curl -k --resolve grafana.atlas.localhost:8443:127.0.0.1 https://grafana.atlas.localhost:8443/
              (user admin; password: $bin -c $conf secret get grafana-admin-password)
  MQTT:       user atlas; password: $bin -c $conf secret get mosquitto.atlas.password
  Secrets:    $bin -c $conf secret list
Remove it with: $bin -c $conf destroy --delete-volumes --yes
TXT
