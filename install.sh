#!/bin/sh
# Installs the atlas-install binary, then runs it with this script's arguments:
#
#   curl -fsSL "$ATLAS_INSTALL_BASE_URL/install.sh" | sh -s -- install --yes
#
# Environment:
#   ATLAS_INSTALL_BASE_URL   where releases live; a release's files are under
#                            <base>/<version>/: atlas-install-<version>-<arch> (static
#                            binary, arch x86_64 or aarch64), SHA256SUMS (sha256sum format,
#                            one line per file of the release). <base>/latest/ is the newest.
#   ATLAS_VERSION            release to install (default: latest).
#   ATLAS_INSTALL_BIN_DIR    where the binary goes (default: /usr/local/bin).
#   ATLAS_INSTALL_SKIP_DOWNLOAD=/path/to/binary
#                            install this file instead of downloading one. It is checked
#                            against SHA256SUMS when one is available: from the base URL if
#                            set, else a SHA256SUMS file next to it. Without either it is
#                            installed as is, with a warning (it is the operator's own file).
#
# Nothing is installed unless its sha256 matches SHA256SUMS; a binary already installed with
# the right sha256 is not downloaded again. SHA256SUMS itself is checked against its minisign
# signature (SHA256SUMS.minisig, by the release key written into this script by
# release/build.sh) when `minisign` is installed; without minisign, or in the repository's
# copy (no key), the script says plainly that it could not check it. The whole script is one
# function called on the last line, so a download cut short runs nothing.

set -eu

# The release's minisign public key; release/build.sh writes it into the released copy.
release_pubkey=""

say() {
    printf 'atlas-install.sh: %s\n' "$*" >&2
}

die() {
    say "error: $*"
    exit 1
}

# Release asset architecture names, from the kernel's.
detect_arch() {
    case "$(uname -m)" in
        x86_64 | amd64) echo x86_64 ;;
        aarch64 | arm64) echo aarch64 ;;
        *) die "unsupported architecture $(uname -m): releases exist for x86_64 and aarch64" ;;
    esac
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        die "neither sha256sum nor shasum is installed: cannot verify the download"
    fi
}

# fetch URL FILE: -f so an HTTP error is a failure, not a saved error page.
fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --proto '=http,https' -o "$2" "$1" || die "download of $1 failed"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1" || die "download of $1 failed"
    else
        die "neither curl nor wget is installed: cannot download $1"
    fi
}

# sums_entry SUMS NAME: prints "<sha256> <file name>" of the line for file NAME or, with
# NAME empty, of the first atlas-install binary for $arch; prints nothing when there is none.
# Exact string comparison (awk), so a version's dots or pluses are not regex syntax.
sums_entry() {
    awk -v want="$2" -v suffix="-$arch" '
        { n = $2; sub(/^\*/, "", n) }
        length($1) != 64 || $1 !~ /^[0-9a-f]+$/ { next }
        want != "" && n == want { print $1 " " n; exit }
        want == "" && index(n, "atlas-install-") == 1 &&
            substr(n, length(n) - length(suffix) + 1) == suffix { print $1 " " n; exit }
    ' "$1"
}

cleanup() {
    if [ -n "${tmp_dir:-}" ]; then
        rm -rf "$tmp_dir"
    fi
    if [ -n "${partial:-}" ]; then
        rm -f "$partial"
    fi
}

# check_sums_signature SUMS SIG WHERE: SIG is the local path of SHA256SUMS.minisig (fetched
# or next to a local file), WHERE names SHA256SUMS in messages. A bad signature, or a missing
# one while this script carries a release key, stops everything.
check_sums_signature() {
    if [ -z "$release_pubkey" ]; then
        say "warning: this install.sh carries no release key, so the signature of SHA256SUMS is NOT checked; the binary is checked only against SHA256SUMS"
        return 0
    fi
    if ! command -v minisign >/dev/null 2>&1; then
        say "warning: minisign is not installed, so the signature of SHA256SUMS ($3) is NOT checked: the binary is checked only against SHA256SUMS, which whoever controls that server could change too. Install minisign (e.g. apt-get install minisign) and run this again to check it."
        return 0
    fi
    [ -f "$2" ] || die "$3 has no signature (SHA256SUMS.minisig), but this install.sh expects one by the release key; refusing. Nothing was installed."
    if minisign -V -q -P "$release_pubkey" -m "$1" -x "$2" >/dev/null 2>&1; then
        say "SHA256SUMS signature verified with minisign (release key $release_pubkey)"
    else
        die "$3 does not match its signature by the release key (changed, or signed by another key); refusing. Nothing was installed."
    fi
}

# Fetches URL to FILE when the server has it; no file (and no error) when it does not.
fetch_optional() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --proto '=http,https' -o "$2" "$1" 2>/dev/null || rm -f "$2"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1" 2>/dev/null || rm -f "$2"
    fi
}

# Picks the asset name and its expected sha256 out of SHA256SUMS for this arch and version.
expect_from_sums() {
    if [ "$version" = latest ]; then
        entry=$(sums_entry "$1" "")
    else
        entry=$(sums_entry "$1" "atlas-install-$version-$arch")
    fi
    [ -n "$entry" ] || die "SHA256SUMS ($2) lists no atlas-install binary for $arch (version $version)"
    expected=${entry%% *}
    asset=${entry#* }
}

main() {
    base_url=${ATLAS_INSTALL_BASE_URL:-}
    base_url=${base_url%/}
    version=${ATLAS_VERSION:-latest}
    bin_dir=${ATLAS_INSTALL_BIN_DIR:-/usr/local/bin}
    local_file=${ATLAS_INSTALL_SKIP_DOWNLOAD:-}
    target="$bin_dir/atlas-install"
    expected=""
    asset=""
    tmp_dir=""
    partial=""
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    [ "$(uname -s)" = Linux ] || die "atlas-install runs on Linux only (this is $(uname -s))"
    arch=$(detect_arch)
    if [ -z "$base_url" ] && [ -z "$local_file" ]; then
        die "set ATLAS_INSTALL_BASE_URL to the release location (or ATLAS_INSTALL_SKIP_DOWNLOAD to a local binary)"
    fi
    tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/atlas-install.XXXXXX")

    if [ -n "$base_url" ]; then
        fetch "$base_url/$version/SHA256SUMS" "$tmp_dir/SHA256SUMS"
        if [ -n "$release_pubkey" ] && command -v minisign >/dev/null 2>&1; then
            fetch_optional "$base_url/$version/SHA256SUMS.minisig" "$tmp_dir/SHA256SUMS.minisig"
        fi
        check_sums_signature "$tmp_dir/SHA256SUMS" "$tmp_dir/SHA256SUMS.minisig" "$base_url/$version/SHA256SUMS"
        expect_from_sums "$tmp_dir/SHA256SUMS" "$base_url/$version/SHA256SUMS"
    elif [ -f "$(dirname "$local_file")/SHA256SUMS" ]; then
        sums="$(dirname "$local_file")/SHA256SUMS"
        check_sums_signature "$sums" "$sums.minisig" "$sums"
        entry=$(sums_entry "$sums" "$(basename "$local_file")")
        [ -n "$entry" ] || die "$sums has no line for $(basename "$local_file"); refusing to install an unlisted file"
        expected=${entry%% *}
        asset=${entry#* }
    fi

    if [ -n "$expected" ] && [ -f "$target" ] && [ "$(sha256_of "$target")" = "$expected" ]; then
        say "$target is already this release ($asset); nothing to download"
    else
        install_binary
    fi

    if [ "$#" -eq 0 ]; then
        say "installed $target; run: atlas-install install"
        exit 0
    fi
    cleanup
    trap - EXIT INT TERM
    exec "$target" "$@"
}

# Downloads (or takes the local file), verifies, and moves into place atomically.
install_binary() {
    if [ ! -d "$bin_dir" ]; then
        mkdir -p "$bin_dir" || die "cannot create $bin_dir (run as root, or set ATLAS_INSTALL_BIN_DIR)"
    fi
    [ -w "$bin_dir" ] || die "cannot write to $bin_dir: run as root (curl ... | sudo sh -s -- ...) or set ATLAS_INSTALL_BIN_DIR"
    # In the target directory, so the final mv is a rename (atomic, never half a binary).
    partial=$(mktemp "$bin_dir/.atlas-install.XXXXXX")
    if [ -n "$local_file" ]; then
        [ -f "$local_file" ] || die "ATLAS_INSTALL_SKIP_DOWNLOAD=$local_file is not a file"
        cp "$local_file" "$partial"
    else
        say "downloading $asset"
        fetch "$base_url/$version/$asset" "$partial"
    fi
    if [ -n "$expected" ]; then
        actual=$(sha256_of "$partial")
        if [ "$actual" != "$expected" ]; then
            die "checksum mismatch for ${asset:-$local_file}: got sha256 $actual, SHA256SUMS says $expected. Nothing was installed; the download is damaged or tampered with: try again, or check the release."
        fi
    else
        say "warning: no SHA256SUMS for $local_file; installing it unverified (your own file)"
    fi
    chmod 0755 "$partial"
    mv -f "$partial" "$target"
    partial=""
    say "installed $target (${asset:-$local_file})"
}

main "$@"
