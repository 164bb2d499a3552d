#!/usr/bin/env bash
# Benchmark: atlas-install's streaming image pipeline against the peer pipeline Incus uses
# for OCI images (skopeo copy + umoci unpack, and for an import + tar + incus image import).
#
# Not a test and not run by CI: it needs root, the local registry and incusd
# (tests/start-services.sh), about 10 GB of free space under the work directory, and minutes.
# Without drop_caches permission it still runs, and says so above the table.
#
# What it does, in one run:
#  1. Generates a large image once (cached under the work directory): layer 1 is a copy of
#     /usr/lib/x86_64-linux-gnu, layer 2 a copy of /usr/bin and /usr/lib/python3 plus
#     incompressible random data and a whiteout of a layer-1 directory. Written as an OCI
#     layout by hand (tar, gzip, zstd, sha256sum, jq) with a gzip and a zstd variant, and
#     pushed to the registry with skopeo.
#  2. For each variant and each of N runs, with the page cache dropped before every
#     measured command: the peer and atlas-install side by side, convert then import.
#  3. Prints a markdown table of the best run (lowest wall time) of each pipeline.
#
# Measured per pipeline (the whole process tree of the pipeline, by /usr/bin/time and
# /proc/PID/io of the shell that ran it, which includes every reaped child):
#   wall time, user+sys CPU, peak RSS (the largest single process), bytes written to disk
#   (write_bytes: what the pipeline dirtied, blob caches included). For imports, incusd's
#   CPU and write_bytes deltas are shown apart: that work happens in the shared daemon.
#
# Usage: benches/image-pipeline.sh [--runs N] [--variants "gzip zstd"] [--no-import]
#          [--work DIR] [--atlas BIN] [--random-mb MB] [--regenerate]
# Environment: BENCH_RUNS, BENCH_VARIANTS, BENCH_DIR, BENCH_ATLAS, BENCH_RANDOM_MB,
#   BENCH_REGISTRY (127.0.0.1:5000), BENCH_REPO (t-bench/large), INCUS_SOCKET.
set -euo pipefail

RUNS=${BENCH_RUNS:-3}
VARIANTS=${BENCH_VARIANTS:-gzip zstd}
WORK=${BENCH_DIR:-/var/tmp/atlas-bench}
ATLAS=${BENCH_ATLAS:-}
RANDOM_MB=${BENCH_RANDOM_MB:-256}
REGISTRY=${BENCH_REGISTRY:-127.0.0.1:5000}
REPO=${BENCH_REPO:-t-bench/large}
SOCKET=${INCUS_SOCKET:-/var/lib/incus/unix.socket}
IMPORT=1
REGENERATE=0
# Bumped whenever the generated image changes, so a cached layout is rebuilt.
GEN_VERSION=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    --no-import) IMPORT=0; shift ;;
    --work) WORK=$2; shift 2 ;;
    --atlas) ATLAS=$2; shift 2 ;;
    --random-mb) RANDOM_MB=$2; shift 2 ;;
    --regenerate) REGENERATE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "image-pipeline.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# atlas-install reads every ATLAS_* variable as configuration; none may leak into it.
for v in $(compgen -e | grep '^ATLAS_' || true); do unset "$v"; done
repo_root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "bench: $*" >&2; }
die() { echo "image-pipeline.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (drops the page cache, talks to incusd)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, got $RUNS"
for tool in skopeo umoci jq gzip zstd sha256sum tar /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool is missing: run tests/setup-host.sh"
done
curl -fsS -o /dev/null "http://$REGISTRY/v2/" \
  || die "no registry at $REGISTRY: run tests/start-services.sh"
if [ "$IMPORT" = 1 ]; then
  # A busy shared daemon can take long to answer; it only has to answer.
  timeout 120 incus query /1.0 >/dev/null 2>&1 \
    || die "incusd does not answer: run tests/start-services.sh (or pass --no-import)"
fi
if [ -z "$ATLAS" ]; then
  ATLAS="$repo_root/target/x86_64-unknown-linux-musl/release/atlas-install"
  if [ ! -x "$ATLAS" ]; then
    say "building the static release binary (tests/build-static.sh)"
    ATLAS="$repo_root/$("$repo_root/tests/build-static.sh" | tail -n1)"
  fi
fi
[ -x "$ATLAS" ] || die "no atlas-install binary at $ATLAS"

mkdir -p "$WORK"
LAYOUT=$WORK/layout
RES=$WORK/results
RUNDIR=$WORK/run
rm -rf "$RES" "$RUNDIR"
mkdir -p "$RES" "$RUNDIR"

# ---------------------------------------------------------------------------------------
# 1. The image
# ---------------------------------------------------------------------------------------

# Writes a blob into the layout; prints its digest.
put_blob() {
  local file=$1 d
  d=$(sha256sum "$file" | cut -d' ' -f1)
  mkdir -p "$LAYOUT/blobs/sha256"
  mv "$file" "$LAYOUT/blobs/sha256/$d"
  echo "sha256:$d"
}

blob_size() { stat -c %s "$LAYOUT/blobs/sha256/${1#sha256:}"; }

# tar of live system files: "file changed as we read it" (exit 1) is not a failure here.
tar_live() {
  local rc=0
  tar --numeric-owner --warning=no-file-changed --warning=no-file-removed -cf - "$@" || rc=$?
  [ "$rc" -le 1 ] || return "$rc"
}

layer_os() {
  tar_live -C / --no-recursion usr usr/lib --recursion usr/lib/x86_64-linux-gnu
}

layer_app() {
  local stage=$WORK/stage
  rm -rf "$stage"
  mkdir -p "$stage/opt/bench" "$stage/usr/lib/x86_64-linux-gnu"
  # Incompressible data, as in images that ship compressed assets or models.
  local n=$((RANDOM_MB / 16)) i
  for ((i = 0; i < n; i++)); do
    head -c $((16 << 20)) /dev/urandom > "$stage/opt/bench/random-$i.bin"
  done
  # A whiteout of a layer-1 directory: the merge has to drop its whole subtree.
  : > "$stage/usr/lib/x86_64-linux-gnu/.wh.gconv"
  tar_live -C / --no-recursion usr usr/lib --recursion usr/bin usr/lib/python3 \
    -C "$stage" opt usr/lib/x86_64-linux-gnu/.wh.gconv
  rm -rf "$stage"
}

generate() {
  say "generating the image in $LAYOUT (once; cached)"
  rm -rf "$LAYOUT"
  mkdir -p "$LAYOUT/blobs/sha256"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$LAYOUT/oci-layout"
  local diffs=() gz=() zs=() total=0 name tmp
  for name in os app; do
    tmp=$WORK/$name.tar.gz
    "layer_$name" | gzip -n -6 > "$tmp"
    local size diff
    gzip -dc "$tmp" | zstd -q -3 -T0 -o "$WORK/$name.tar.zst"
    size=$(gzip -dc "$tmp" | wc -c)
    diff=$(gzip -dc "$tmp" | sha256sum | cut -d' ' -f1)
    total=$((total + size))
    diffs+=("sha256:$diff")
    gz+=("$(put_blob "$tmp")")
    zs+=("$(put_blob "$WORK/$name.tar.zst")")
    say "layer $name: $size bytes uncompressed"
  done
  [ "$total" -ge $((1 << 30)) ] \
    || die "the generated image is only $total bytes uncompressed; raise --random-mb"
  local config
  config=$(jq -cn --argjson diffs "$(printf '%s\n' "${diffs[@]}" | jq -R . | jq -cs .)" '{
      created: "2026-01-01T00:00:00Z", architecture: "amd64", os: "linux",
      config: {Cmd: ["/usr/bin/bash"], Env: ["PATH=/usr/bin"]},
      rootfs: {type: "layers", diff_ids: $diffs},
      history: [{created_by: "copy of /usr/lib/x86_64-linux-gnu"},
                {created_by: "copy of /usr/bin, /usr/lib/python3, random data, a whiteout"}]}')
  printf '%s' "$config" > "$WORK/config.json"
  local cfg manifests=()
  cfg=$(put_blob "$WORK/config.json")
  local variant media blobs
  for variant in gzip zstd; do
    if [ "$variant" = gzip ]; then blobs=("${gz[@]}"); media=application/vnd.oci.image.layer.v1.tar+gzip
    else blobs=("${zs[@]}"); media=application/vnd.oci.image.layer.v1.tar+zstd; fi
    local layers=() b
    for b in "${blobs[@]}"; do
      layers+=("$(jq -cn --arg d "$b" --arg m "$media" --argjson s "$(blob_size "$b")" \
        '{mediaType: $m, digest: $d, size: $s}')")
    done
    jq -cn --arg c "$cfg" --argjson cs "$(blob_size "$cfg")" \
      --argjson layers "$(printf '%s\n' "${layers[@]}" | jq -cs .)" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
        layers: $layers}' | tr -d '\n' > "$WORK/manifest.json"
    local m
    m=$(put_blob "$WORK/manifest.json")
    manifests+=("$(jq -cn --arg d "$m" --argjson s "$(blob_size "$m")" --arg t "$variant" '{
      mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
      annotations: {"org.opencontainers.image.ref.name": $t}}')")
  done
  printf '%s\n' "${manifests[@]}" | jq -cs '{schemaVersion: 2, manifests: .}' > "$LAYOUT/index.json"
  echo "$GEN_VERSION $total" > "$LAYOUT/.generated"
}

if [ "$REGENERATE" = 1 ] || [ "$(cut -d' ' -f1 "$LAYOUT/.generated" 2>/dev/null)" != "$GEN_VERSION" ]; then
  generate
fi
UNCOMPRESSED=$(cut -d' ' -f2 "$LAYOUT/.generated")

manifest_of() { # variant -> manifest digest in the layout
  jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$LAYOUT/index.json"
}

push() { # variant
  local want have
  want=$(manifest_of "$1")
  have=$( (skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/$REPO:$1" 2>/dev/null || true) \
    | sha256sum | cut -d' ' -f1)
  if [ "sha256:$have" = "$want" ]; then return 0; fi
  say "pushing $1 to $REGISTRY/$REPO:$1"
  skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:$1" "docker://$REGISTRY/$REPO:$1" >&2
  have=$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/$REPO:$1" | sha256sum | cut -d' ' -f1)
  [ "sha256:$have" = "$want" ] || say "note: the registry serves $1 as sha256:$have (layout has $want)"
}

# ---------------------------------------------------------------------------------------
# 2. The pipelines (exported: each runs in its own measured shell)
# ---------------------------------------------------------------------------------------

PROJECT=t-bench-$$
export ATLAS REGISTRY REPO SOCKET PROJECT RUNDIR

peer_convert() {
  skopeo copy -q --src-tls-verify=false "docker://$REGISTRY/$REPO:$VARIANT" "oci:$RUNDIR/oci:img"
  umoci unpack --image "$RUNDIR/oci:img" "$RUNDIR/bundle" >/dev/null
}

peer_import() {
  peer_convert
  printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  description: bench\n' \
    "$(date +%s)" > "$RUNDIR/bundle/metadata.yaml"
  tar -C "$RUNDIR/bundle" -cf "$RUNDIR/unified.tar" metadata.yaml rootfs
  incus image import -q --project "$PROJECT" "$RUNDIR/unified.tar" --alias "peer-$VARIANT" >/dev/null
}

atlas() {
  "$ATLAS" --progress none --incus-socket "$SOCKET" --project "$PROJECT" "$@" \
    --cache-dir "$RUNDIR/cache" 2>"$RUNDIR/atlas.err"
}

atlas_convert_file() { atlas image convert "docker://$REGISTRY/$REPO:$VARIANT" --out "$RUNDIR/unified.tar"; }
atlas_convert_null() { atlas image convert "docker://$REGISTRY/$REPO:$VARIANT" --out /dev/null; }
atlas_convert_pipe() { atlas image convert "docker://$REGISTRY/$REPO:$VARIANT" --out - | cat >/dev/null; }
atlas_import() { atlas image import "docker://$REGISTRY/$REPO:$VARIANT" --alias "atlas-$VARIANT" >/dev/null; }
export -f peer_convert peer_import atlas atlas_convert_file atlas_convert_null atlas_convert_pipe atlas_import

DROPPED=unknown
drop_caches() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROPPED=yes; else DROPPED=no; fi
}

incusd_pid() { pgrep -o -x incusd || true; }
# "cpu_ticks write_bytes" of incusd (0 0 without one)
incusd_sample() {
  local pid
  pid=$(incusd_pid)
  [ -n "$pid" ] || { echo "0 0"; return; }
  local ticks
  ticks=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
  echo "$ticks $(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")"
}
TICKS=$(getconf CLK_TCK)

# measure LABEL FUNCTION: one measured run; appends a line to $RES/LABEL
measure() {
  local label=$1 fn=$2
  local out=$RES/$label
  rm -rf "$RUNDIR"; mkdir -p "$RUNDIR"
  drop_caches
  local before after
  before=$(incusd_sample)
  if ! /usr/bin/time -f '%e %U %S %M' -o "$out.time" bash -c \
      '"$1"; rc=$?; awk "/^write_bytes/ {print \$2}" /proc/$$/io > "$2"; exit $rc' \
      _ "$fn" "$out.io"; then
    say "$label failed (run $run); its stderr:"
    cat "$RUNDIR/atlas.err" >&2 2>/dev/null || true
    die "$label failed (run $run)"
  fi
  after=$(incusd_sample)
  local t io
  t=$(tail -n1 "$out.time")
  io=$(cat "$out.io")
  read -r w u s m <<< "$t"
  read -r c0 w0 <<< "$before"
  read -r c1 w1 <<< "$after"
  echo "$w $(echo "$u + $s" | bc) $m $io $(echo "scale=2; ($c1 - $c0) / $TICKS" | bc) $((w1 - w0))" >> "$out"
  say "$label run $run: wall ${w}s cpu $(echo "$u + $s" | bc)s rss ${m}KiB written $((io >> 20))MiB"
}

# Checks once per variant that both tools produced the same tree: regular files (hard-link
# groups once) and their bytes. atlas-install adds its own layer (sbin/init, etc/atlas/*),
# which the generated image does not have, so those are left out of the count.
check_same_tree() {
  local a b
  a=$(find "$RUNDIR/bundle/rootfs" -type f -printf '%i %s\n' | sort -u | awk '{n++; s+=$2} END {print n, s}')
  b=$(tar -tvf "$RUNDIR/atlas.tar" | awk '$1 ~ /^-/ && $6 ~ /^rootfs\// && $6 !~ /^rootfs\/(sbin\/init|etc\/atlas\/)/ {n++; s+=$3} END {print n, s}')
  if [ "$a" = "$b" ]; then say "check: umoci's rootfs and atlas' tarball agree: $a (files, bytes)"
  else say "WARNING: umoci's rootfs ($a) and atlas' tarball ($b) differ (files, bytes)"; fi
}

cleanup() {
  if [ "$IMPORT" = 1 ] && incus project show "$PROJECT" >/dev/null 2>&1; then
    local fp
    for fp in $(incus image list --project "$PROJECT" -c f -f csv 2>/dev/null); do
      incus image delete --project "$PROJECT" "$fp" >/dev/null 2>&1 || true
    done
    incus project delete "$PROJECT" >/dev/null 2>&1 || say "could not delete project $PROJECT"
  fi
  rm -rf "$RUNDIR"
}
trap cleanup EXIT

drop_image() { # alias
  incus image delete --project "$PROJECT" "$1" >/dev/null 2>&1 || true
}

if [ "$IMPORT" = 1 ]; then
  incus project create "$PROJECT" -c features.images=true -c features.profiles=false >/dev/null
fi

for VARIANT in $VARIANTS; do
  export VARIANT
  push "$VARIANT"
  peer_ok=1
  # One unmeasured pass: umoci must be able to read this variant, and the trees must agree.
  rm -rf "$RUNDIR"; mkdir -p "$RUNDIR"
  if ! peer_convert 2>"$RES/peer-$VARIANT.err"; then
    say "peer pipeline cannot handle $VARIANT: $(tail -n1 "$RES/peer-$VARIANT.err")"
    peer_ok=0
  else
    atlas image convert "docker://$REGISTRY/$REPO:$VARIANT" --out "$RUNDIR/atlas.tar"
    check_same_tree
  fi
  for ((run = 1; run <= RUNS; run++)); do
    [ "$peer_ok" = 1 ] && measure "convert-peer-$VARIANT" peer_convert
    measure "convert-atlas-file-$VARIANT" atlas_convert_file
    measure "convert-atlas-null-$VARIANT" atlas_convert_null
    measure "convert-atlas-pipe-$VARIANT" atlas_convert_pipe
    if [ "$IMPORT" = 1 ]; then
      if [ "$peer_ok" = 1 ]; then
        measure "import-peer-$VARIANT" peer_import
        drop_image "peer-$VARIANT"
      fi
      measure "import-atlas-$VARIANT" atlas_import
      drop_image "atlas-$VARIANT"
    fi
  done
done

# ---------------------------------------------------------------------------------------
# 3. The table
# ---------------------------------------------------------------------------------------

best() { sort -n -k1,1 "$RES/$1" | head -n1; }
describe() {
  case "$1" in
    convert-peer-*) echo 'skopeo copy + umoci unpack' ;;
    convert-atlas-file-*) echo 'atlas-install image convert --out FILE' ;;
    convert-atlas-null-*) echo 'atlas-install image convert --out /dev/null' ;;
    convert-atlas-pipe-*) echo 'atlas-install image convert --out - \| cat' ;;
    import-peer-*) echo 'skopeo copy + umoci unpack + tar + incus image import' ;;
    import-atlas-*) echo 'atlas-install image import' ;;
  esac
}
mib() { echo "scale=0; $1 / 1048576" | bc; }

echo
echo "Image: $((UNCOMPRESSED >> 20)) MiB uncompressed, 2 layers; $RUNS run(s) each, best (lowest wall) shown;"
echo "page cache dropped before every run: $DROPPED. $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM."
echo
echo "| Pipeline | Layers | Wall s | CPU user+sys s | Peak RSS MiB | Written MiB | incusd CPU s | incusd written MiB | Speed-up vs peer |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for VARIANT in $VARIANTS; do
  for kind in convert import; do
    peer_wall=
    [ -f "$RES/$kind-peer-$VARIANT" ] && peer_wall=$(best "$kind-peer-$VARIANT" | cut -d' ' -f1)
    for label in "$kind-peer-$VARIANT" "$kind-atlas-file-$VARIANT" "$kind-atlas-null-$VARIANT" \
        "$kind-atlas-pipe-$VARIANT" "$kind-atlas-$VARIANT"; do
      [ -f "$RES/$label" ] || continue
      read -r w c m io ic iw <<< "$(best "$label")"
      speed=
      if [ -n "$peer_wall" ] && [[ "$label" != *-peer-* ]]; then
        speed="$(echo "scale=2; $peer_wall / $w" | bc)x"
      fi
      incus_cols="| | "
      [ "$kind" = import ] && incus_cols="| $ic | $(mib "$iw") "
      echo "| $(describe "$label") | $VARIANT | $w | $c | $((m / 1024)) | $(mib "$io") $incus_cols| $speed |"
    done
    if [ -z "$peer_wall" ]; then
      echo "| skopeo + umoci ($kind) | $VARIANT | n/a: umoci cannot read this variant | | | | | | |"
    fi
  done
done
