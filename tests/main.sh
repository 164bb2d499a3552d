#!/usr/bin/env bash
# The main job (README): prepare the host, build the static binary, validate and render the
# default configuration. Grows into the full demo install as the engine lands.
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
