#!/usr/bin/env bash
# Builds one release into DIR/<version>/ (see README, "Release"):
#
#   atlas-install-<version>-<arch>   static musl binary (tests/build-static.sh), embedding the
#                                    release public keys (release/keys.pub + --sign-pubkey)
#   atlas-<version>-<arch>.bundle    offline bundle made BY that binary (so it carries itself),
#                                    its manifest signed (atlas-bundle.json.minisig inside)
#   install.sh                       the curl | sh bootstrap, with the release public key
#   SHA256SUMS                       sha256sum of each file above
#   SHA256SUMS.minisig               minisign signature of SHA256SUMS
#
# Usage: release/build.sh --registry-mirror HOST[:PORT] --sign-key KEY --sign-pubkey KEY.pub
#                         [--out DIR] [--images-lock FILE] [-- EXTRA bundle create ARGS]
#        release/build.sh --registry-mirror HOST[:PORT] --unsigned ...   (a test release)
# The signing key is a minisign secret key file (`minisign -G`); an encrypted one takes its
# password from the file ATLAS_SIGN_PASSWORD_FILE names (never from an argument), else asks
# on the terminal.
# Env: ATLAS_RELEASE_BIN=PATH uses an already built binary instead of building one; it
# should embed the release key (built with ATLAS_RELEASE_PUBKEYS), else a warning says so.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "release/build.sh: $*" >&2; exit 2; }

out=target/dist
mirror=""
lock=""
key=""
pubkey=""
unsigned=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --registry-mirror) mirror=$2; shift 2 ;;
    --images-lock) lock=$2; shift 2 ;;
    --sign-key) key=$2; shift 2 ;;
    --sign-pubkey) pubkey=$2; shift 2 ;;
    --unsigned) unsigned=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see the header of this script)" ;;
  esac
done
# No upstream registry is reachable from the build hosts: the images come through a mirror.
[ -n "$mirror" ] || die "--registry-mirror HOST[:PORT] is required"
if [ "$unsigned" = 1 ]; then
  [ -z "$key$pubkey" ] || die "--unsigned and --sign-key/--sign-pubkey exclude each other"
  echo "release/build.sh: warning: --unsigned: nothing is signed; install.sh carries no key" >&2
else
  [ -n "$key" ] && [ -n "$pubkey" ] ||
    die "--sign-key KEY and --sign-pubkey KEY.pub are required (or --unsigned for a test release)"
  [ -r "$key" ] || die "signing key $key is not readable"
  # The base64 line of the .pub file (minisign -G writes a comment line, then the key).
  pub_b64=$(grep -v '^untrusted comment:' "$pubkey" | grep -m1 -E '^RW[A-Za-z0-9+/=]{54}$') ||
    die "$pubkey holds no minisign public key"
fi

if [ -n "${ATLAS_RELEASE_BIN:-}" ]; then
  bin=$ATLAS_RELEASE_BIN
else
  # A stable path: cargo rebuilds when the file's content (or its name) changes.
  mkdir -p "$out"
  keys="$out/.release-keys.pub"
  cat release/keys.pub > "$keys"
  if [ "$unsigned" = 0 ] && ! grep -qxF "$pub_b64" release/keys.pub; then
    printf 'untrusted comment: release key given to release/build.sh\n%s\n' "$pub_b64" >> "$keys"
  fi
  bin=$(ATLAS_RELEASE_PUBKEYS=$keys bash tests/build-static.sh | tail -n 1)
fi
# "atlas-install 0.1.0 (commit abc)": the version is what the binary says, not a guess.
version=$("$bin" --version | awk '{print $2}')
arch=$(uname -m)
dir="$out/$version"
rm -rf "$dir"
mkdir -p "$dir"
release_bin="$dir/atlas-install-$version-$arch"
bundle="$dir/atlas-$version-$arch.bundle"
cp "$bin" "$release_bin"
if [ "$unsigned" = 1 ]; then
  cp install.sh "$dir/install.sh"
else
  # Exactly one key line in the script: the released copy carries the release key.
  [ "$(grep -c '^release_pubkey=""$' install.sh)" = 1 ] || die "install.sh has no empty release_pubkey line"
  sed "s|^release_pubkey=\"\"\$|release_pubkey=\"$pub_b64\"|" install.sh > "$dir/install.sh"
fi

bundle_args=(--progress plain bundle create --out "$bundle" --registry-mirror "$mirror"
  --cache-dir "$out/.cache")
[ -z "$lock" ] || bundle_args+=(--images-lock "$lock")
[ "$unsigned" = 1 ] || bundle_args+=(--sign "$key")
"$release_bin" "${bundle_args[@]}" "${extra[@]}"
if [ "$unsigned" = 1 ]; then
  "$release_bin" --progress none bundle verify --allow-unsigned "$bundle" >&2
else
  "$release_bin" --progress none bundle verify --trust-key "$pubkey" "$bundle" >&2
  # What an installing host will see: the binary must trust the key on its own.
  if ! "$release_bin" --progress none bundle verify "$bundle" >/dev/null 2>&1; then
    echo "release/build.sh: warning: $release_bin does not embed the release key $pubkey: installs of this bundle will need --trust-key (build without ATLAS_RELEASE_BIN, or with ATLAS_RELEASE_PUBKEYS naming the key)" >&2
  fi
fi

(cd "$dir" && sha256sum "atlas-install-$version-$arch" "atlas-$version-$arch.bundle" install.sh > SHA256SUMS \
  && sha256sum -c --quiet SHA256SUMS)
if [ "$unsigned" = 0 ]; then
  "$release_bin" signature sign --key "$key" "$dir/SHA256SUMS" >&2
  "$release_bin" signature verify --trust-key "$pubkey" "$dir/SHA256SUMS" >&2
fi
echo "release/build.sh: release $version for $arch in $dir:" >&2
ls -l "$dir" >&2
echo "$dir"
