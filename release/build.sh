#!/usr/bin/env bash
# Builds one release into DIR/<version>/ (see README, "Release"):
#
#   atlas-install-<version>-<arch>   static musl binary (tests/build-static.sh)
#   atlas-<version>-<arch>.bundle    offline bundle made BY that binary (so it carries itself)
#   install.sh                       the curl | sh bootstrap
#   SHA256SUMS                       sha256sum of each file above
#
# Usage: release/build.sh --registry-mirror HOST[:PORT] [--out DIR] [--images-lock FILE]
#                         [-- EXTRA bundle create ARGS, e.g. --service prometheus]
# Env: ATLAS_RELEASE_BIN=PATH uses an already built static binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/dist
mirror=""
lock=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --registry-mirror) mirror=$2; shift 2 ;;
    --images-lock) lock=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "release/build.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
# No upstream registry is reachable from the build hosts: the images come through a mirror.
[ -n "$mirror" ] || { echo "release/build.sh: --registry-mirror HOST[:PORT] is required" >&2; exit 2; }

bin=${ATLAS_RELEASE_BIN:-$(bash tests/build-static.sh | tail -n 1)}
# "atlas-install 0.1.0 (commit abc)": the version is what the binary says, not a guess.
version=$("$bin" --version | awk '{print $2}')
arch=$(uname -m)
dir="$out/$version"
rm -rf "$dir"
mkdir -p "$dir"
cp "$bin" "$dir/atlas-install-$version-$arch"
cp install.sh "$dir/install.sh"

bundle_args=(--progress plain bundle create --out "$dir/atlas-$version-$arch.bundle"
  --registry-mirror "$mirror" --cache-dir "$out/.cache")
[ -z "$lock" ] || bundle_args+=(--images-lock "$lock")
"$dir/atlas-install-$version-$arch" "${bundle_args[@]}" "${extra[@]}"
"$dir/atlas-install-$version-$arch" --progress none bundle verify "$dir/atlas-$version-$arch.bundle"

(cd "$dir" && sha256sum "atlas-install-$version-$arch" "atlas-$version-$arch.bundle" install.sh > SHA256SUMS \
  && sha256sum -c --quiet SHA256SUMS)
echo "release/build.sh: release $version for $arch in $dir:" >&2
ls -l "$dir" >&2
echo "$dir"
