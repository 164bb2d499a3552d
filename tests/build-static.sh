#!/usr/bin/env bash
# Build the statically linked release binary and prove it is static and runs from anywhere.
# Prints the path of the binary on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
cargo build --release --locked --target "$target" -p atlas-install >&2
bin="target/$target/release/atlas-install"
desc=$(file -b "$bin")
case "$desc" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "build-static.sh: $bin is not static: $desc" >&2; exit 1 ;;
esac
# No program interpreter and no shared-library dependencies.
if readelf -l "$bin" | grep -q 'INTERP' || readelf -d "$bin" | grep -q '(NEEDED)'; then
  echo "build-static.sh: $bin needs a dynamic loader or shared libraries" >&2; exit 1
fi
# Runs with nothing around it: copied into an empty directory, empty environment.
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
cp "$bin" "$scratch/atlas-install"
(cd "$scratch" && env -i ./atlas-install --version >&2)
echo "build-static.sh: $(du -h "$bin" | cut -f1) static binary ok" >&2
echo "$bin"
