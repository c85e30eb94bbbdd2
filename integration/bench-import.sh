#!/usr/bin/env bash
#
# bench-import.sh: how fast fukastor imports real-world images, and how much
# disk they take, next to composefs's own tool and podman's overlay store.
# Run by hand as root (not part of the test suite). About 1-2 minutes with
# the default 3 repetitions once everything is installed; the first time also
# builds cfsctl (~20 minutes on 2 cores) and the fixtures (a few minutes).
#
# What it measures
#   Two real images from integration/fixtures.sh's OCI layout, which share
#   their base layer: `bookworm` (debootstrap --variant=minbase, 1 layer) and
#   `bookworm-python` (the same base + a layer from `apt-get install python3`).
#   Each tool imports bookworm, then bookworm-python, into an EMPTY store:
#     fukastor            fukastor --store DIR -q pull oci:LAYOUT:TAG NAME
#     cfsctl              cfsctl init --insecure DIR (untimed, 10 ms), then
#                         cfsctl --repo DIR oci pull oci:LAYOUT:TAG NAME
#                         (crate composefs-ctl 0.9; its default object digest,
#                         fsverity-sha512-12; no fs-verity on the objects; it
#                         reads the oci: layout itself, and skips layers whose
#                         diff_id it already holds)
#     cfsctl-sha256       the same with `init --algorithm fsverity-sha256-12`:
#                         fukastor's digest, for a like-for-like hashing cost
#     containers-storage  skopeo copy oci:LAYOUT:TAG
#                         containers-storage:[overlay@DIR/root+DIR/run]NAME
#                         (podman's overlay store in a private root, with a
#                         private storage.conf: the host's podman store is untouched)
#   Before every run: a fresh store directory, `sync` and drop_caches (so the
#   layout is read cold). Runs are interleaved tool by tool, $REPS times; the
#   table shows medians (each column's own median: base s + +python s need not
#   add up to total s).
#
# Columns
#   total s      wall time of both imports (the two commands, not the sync after)
#   base s       wall time of the bookworm import
#   +python s    wall time of the bookworm-python import (base layer already there)
#   sync s       wall time of a `sync` right after: writeback the tool left behind
#   cpu s        user+sys CPU time of both imports (GNU time, children included)
#   RSS MiB      peak resident memory of the larger of the two import commands
#   MB/s         uncompressed content / total s. Uncompressed content = the sum of
#                the uncompressed tar sizes of the DISTINCT layers of both images
#                (the shared base counted once), computed from the layout
#   disk MB      du -sB1 of the store after both imports (blocks allocated)
#   apparent MB  du -sB1 --apparent-size of the same
#   disk/unique  disk bytes / unique content bytes (the goal: at most 1.02)
#   files        regular files in both image trees (every hardlink name counted)
#   stored once  files on disk that hold those files' contents: fukastor: objects
#                that are not EROFS images; cfsctl: the union of `cfsctl
#                image-objects` of both images (its other objects are EROFS
#                images, splitstreams, manifests, configs); containers-storage:
#                distinct inodes of regular files in the overlay layer dirs.
#                Files of 64 bytes or less are inline (no object) in fukastor and
#                cfsctl.
#   Unique content = the sum of the sizes of the distinct file contents (by
#   SHA-256) across both images, computed from the layout by a small Python
#   tar walker below (and compared with `fukastor df`'s unique_bytes).
#   MB = 10^6 bytes.
#
# Usage: integration/bench-import.sh [--reps N] [--tools "TOOL..."]
#                                    [--no-install] [--keep]
#   --reps    repetitions (default 3)
#   --tools   any of: fukastor cfsctl cfsctl-sha256 containers-storage (default: all)
#   --no-install  install nothing, build nothing (use the binaries already there)
#   --keep    keep the stores of the last repetition in $FUKASTOR_BENCH_DIR
# Environment:
#   FUKASTOR_FIXTURES     fixtures directory (default /var/tmp/fukastor-fixtures)
#   FUKASTOR_BENCH_DIR    scratch directory for the stores (default /var/tmp/fukastor-bench)
#   FUKASTOR_BIN          fukastor binary (default: cargo build --release, target/release/fukastor)
#   FUKASTOR_THREADS      passed through to fukastor
#   CFSCTL                cfsctl binary (default: cfsctl in PATH or ~/.cargo/bin)

# SC2016: the awk expressions passed to median_of are meant literally.
# SC2154: bench_timed sets NAME_cpu and NAME_rss for its output variable NAME.
# shellcheck disable=SC2016,SC2154
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
export BENCH_NAME=bench-import
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$HERE/lib/bench-common.sh"

FIX=${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}
FIX=${FIX%/}
LAYOUT=$FIX/oci
WORK=${FUKASTOR_BENCH_DIR:-/var/tmp/fukastor-bench}
WORK=${WORK%/}
REPS=3
TOOLS="fukastor cfsctl cfsctl-sha256 containers-storage"
INSTALL=1
KEEP=0
IMAGES=(bookworm bookworm-python)
CFSCTL_VERSION='^0.9'

while (($#)); do
    case $1 in
    --reps) REPS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || bench_die "--reps wants a positive number"
for t in $TOOLS; do
    [[ $t == @(fukastor|cfsctl|cfsctl-sha256|containers-storage) ]] || bench_die "unknown tool $t"
done
[[ $EUID -eq 0 ]] || bench_die "run as root (drop_caches, podman's overlay store)"

mkdir -p "$WORK"
BENCH_LOG=$WORK/bench.log
: >"$BENCH_LOG"
RESULTS=$WORK/results.tsv

# --- tools ----------------------------------------------------------------------

find_cfsctl() {
    if [[ -n ${CFSCTL:-} ]]; then
        echo "$CFSCTL"
    elif command -v cfsctl >/dev/null; then
        command -v cfsctl
    elif [[ -x $HOME/.cargo/bin/cfsctl ]]; then
        echo "$HOME/.cargo/bin/cfsctl"
    fi
}

install_tools() {
    local pkgs=(jq time gzip zstd coreutils util-linux)
    [[ " $TOOLS " == *" containers-storage "* ]] && pkgs+=(skopeo podman)
    command -v python3 >/dev/null || pkgs+=(python3)
    bench_apt_install "${pkgs[@]}"

    if [[ -z ${FUKASTOR_BIN:-} ]]; then
        bench_say "cargo build --release (fukastor)"
        (cd "$REPO" && cargo build --release --quiet) >>"$BENCH_LOG" 2>&1 ||
            bench_die "cargo build --release failed (see $BENCH_LOG)"
    fi

    if [[ " $TOOLS " == *" cfsctl"* && -z $(find_cfsctl) ]]; then
        # composefs-ctl links OpenSSL (through its registry client); build needs these.
        bench_apt_install pkg-config libssl-dev build-essential
        bench_say "cargo install composefs-ctl --version '$CFSCTL_VERSION' --locked (several minutes)"
        cargo install composefs-ctl --version "$CFSCTL_VERSION" --locked >>"$BENCH_LOG" 2>&1 ||
            bench_die "cargo install composefs-ctl failed (see $BENCH_LOG)"
    fi
}

if ((INSTALL)); then install_tools; fi

FK=${FUKASTOR_BIN:-$REPO/target/release/fukastor}
[[ -x $FK ]] || bench_die "no fukastor binary at $FK"
# Benchmark a private copy: a concurrent `cargo build` may replace target/release.
mkdir -p "$WORK/bin"
cp "$FK" "$WORK/bin/fukastor"
FK=$WORK/bin/fukastor
CFS=$(find_cfsctl)
if [[ " $TOOLS " == *" cfsctl"* ]]; then
    [[ -n $CFS ]] || bench_die "cfsctl not found (run without --no-install, or set CFSCTL)"
fi
command -v jq >/dev/null || bench_die "jq is missing"
[[ -x /usr/bin/time ]] || bench_die "GNU time (/usr/bin/time, Debian package time) is missing"

# --- fixtures -------------------------------------------------------------------

have_fixtures() {
    local t
    [[ -f $LAYOUT/index.json ]] || return 1
    for t in "${IMAGES[@]}"; do
        [[ -n $(oci_manifest_of "$LAYOUT" "$t") ]] || return 1
    done
}
if ! have_fixtures; then
    bench_say "fixtures missing in $LAYOUT: running integration/fixtures.sh (takes a few minutes)"
    FUKASTOR_FIXTURES=$FIX "$HERE/fixtures.sh" >&2
    have_fixtures || bench_die "fixtures.sh ran but $LAYOUT lacks ${IMAGES[*]}"
fi

# --- what the images hold (from the layout, before any tool runs) ---------------

# Layers: distinct digests over both images, and their uncompressed tar sizes.
declare -A LAYER_TYPE=()
LAYER_ORDER=()
for img in "${IMAGES[@]}"; do
    while read -r digest mtype; do
        if [[ -z ${LAYER_TYPE[$digest]:-} ]]; then
            LAYER_TYPE[$digest]=$mtype
            LAYER_ORDER+=("$digest")
        fi
    done < <(oci_layers_of "$LAYOUT" "$img")
done
CONTENT_BYTES=0   # uncompressed tar bytes of the distinct layers
COMPRESSED_BYTES=0
for digest in "${LAYER_ORDER[@]}"; do
    size=$(oci_layer_tar_size "$LAYOUT" "$digest" "${LAYER_TYPE[$digest]}")
    CONTENT_BYTES=$((CONTENT_BYTES + size))
    COMPRESSED_BYTES=$((COMPRESSED_BYTES + $(stat -c %s "$LAYOUT/blobs/${digest/://}")))
done

# Files and unique content, by reading the layer tars the way a runtime applies
# them (whiteouts, opaque directories, hardlinks, later entries replace earlier).
# Prints: "files <n>", "logical <bytes>", "unique <bytes>", "unique_files <n>".
scan_images() {
    python3 - "$LAYOUT" "${IMAGES[@]}" <<'PY'
import hashlib, json, os, sys, tarfile

layout, images = sys.argv[1], sys.argv[2:]

def blob(digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)

def manifest(tag):
    with open(os.path.join(layout, "index.json")) as f:
        for m in json.load(f)["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                with open(blob(m["digest"])) as g:
                    return json.load(g)
    sys.exit(f"no tag {tag}")

def norm(name):
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")

def open_layer(digest, media_type):
    if media_type.endswith("+zstd"):
        import subprocess
        p = subprocess.Popen(["zstd", "-dc", blob(digest)], stdout=subprocess.PIPE)
        return tarfile.open(fileobj=p.stdout, mode="r|")
    return tarfile.open(blob(digest), mode="r|*")

layer_cache = {}

def read_layer(digest, media_type):
    """A layer as a list of operations: ('opq', dir), ('wh', path), ('put', path, entry)."""
    if digest in layer_cache:
        return layer_cache[digest]
    ops, seen_files = [], {}
    with open_layer(digest, media_type) as tar:
        for ti in tar:
            path = norm(ti.name)
            base = os.path.basename(path)
            parent = os.path.dirname(path)
            if base == ".wh..wh..opq":
                ops.append(("opq", parent))
            elif base.startswith(".wh."):
                ops.append(("wh", os.path.join(parent, base[4:])))
            elif ti.isreg():
                h = hashlib.sha256()
                f = tar.extractfile(ti)
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                entry = ("file", h.hexdigest(), ti.size)
                seen_files[path] = entry
                ops.append(("put", path, entry))
            elif ti.islnk():
                ops.append(("link", path, norm(ti.linkname)))
            elif ti.isdir():
                ops.append(("put", path, ("dir",)))
            else:
                ops.append(("put", path, ("other",)))
    layer_cache[digest] = ops
    return ops

def remove_tree(tree, path):
    tree.pop(path, None)
    prefix = path + "/" if path else ""
    for p in [p for p in tree if p.startswith(prefix)]:
        del tree[p]

files = logical = 0
contents = {}
for tag in images:
    tree = {}
    for layer in manifest(tag)["layers"]:
        ops = read_layer(layer["digest"], layer["mediaType"])
        # opaque dirs and whiteouts hide what the layers BELOW hold
        for op in ops:
            if op[0] == "opq":
                prefix = op[1] + "/" if op[1] else ""
                for p in [p for p in tree if p.startswith(prefix)]:
                    del tree[p]
            elif op[0] == "wh":
                remove_tree(tree, op[1])
        for op in ops:
            if op[0] == "put":
                old = tree.get(op[1])
                if old is not None and old[0] == "dir" and op[2][0] != "dir":
                    remove_tree(tree, op[1])  # a directory replaced by a non-directory
                tree[op[1]] = op[2]
            elif op[0] == "link":
                target = tree.get(op[2])
                if target is None or target[0] != "file":
                    sys.exit(f"{tag}: hardlink {op[1]} -> {op[2]}: no such file")
                tree[op[1]] = target
    for entry in tree.values():
        if entry[0] == "file":
            files += 1
            logical += entry[2]
            contents[entry[1]] = entry[2]
print("files", files)
print("logical", logical)
print("unique", sum(contents.values()))
print("unique_files", len(contents))
PY
}

bench_say "reading the layout: $LAYOUT (${#LAYER_ORDER[@]} distinct layers)"
declare -A SCAN=()
while read -r k v; do SCAN[$k]=$v; done < <(scan_images)
FILES=${SCAN[files]}
UNIQUE_BYTES=${SCAN[unique]}
bench_say "  uncompressed content $(bench_mb "$CONTENT_BYTES") MB in $(bench_mb "$COMPRESSED_BYTES") MB of blobs;" \
    "$FILES files, unique content $(bench_mb "$UNIQUE_BYTES") MB in ${SCAN[unique_files]} distinct contents"

# --- one run of each tool ------------------------------------------------------
# Each run_TOOL DIR sets: T1 T2 (wall us per image), CPU (us), RSS (peak KiB),
# and STORE (the directory whose size is the store's footprint).

run_fukastor() {
    local dir=$1 a b
    STORE=$dir/store
    bench_timed a "$FK" --store "$STORE" -q pull "oci:$LAYOUT:${IMAGES[0]}" "${IMAGES[0]}"
    bench_timed b "$FK" --store "$STORE" -q pull "oci:$LAYOUT:${IMAGES[1]}" "${IMAGES[1]}"
    T1=$a T2=$b CPU=$((a_cpu + b_cpu)) RSS=$((a_rss > b_rss ? a_rss : b_rss))
}

run_cfsctl() {
    local dir=$1 a b
    STORE=$dir/repo
    local init=("$CFS" init --insecure --algorithm "${2:-fsverity-sha512-12}" "$STORE")
    printf '\n$ (untimed) %s\n' "${init[*]}" >>"$BENCH_LOG"
    "${init[@]}" >>"$BENCH_LOG" 2>&1 || bench_die "${init[*]} failed (see $BENCH_LOG)"
    bench_timed a "$CFS" --repo "$STORE" oci pull "oci:$LAYOUT:${IMAGES[0]}" "${IMAGES[0]}"
    bench_timed b "$CFS" --repo "$STORE" oci pull "oci:$LAYOUT:${IMAGES[1]}" "${IMAGES[1]}"
    T1=$a T2=$b CPU=$((a_cpu + b_cpu)) RSS=$((a_rss > b_rss ? a_rss : b_rss))
}

run_cfsctl_sha256() { run_cfsctl "$1" fsverity-sha256-12; }

run_containers_storage() {
    local dir=$1 a b conf=$1/storage.conf
    STORE=$dir/root
    # A private storage.conf: nothing from /etc/containers (mount_program,
    # additional image stores, ...) applies, and the driver is overlay, not vfs.
    cat >"$conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$dir/root"
runroot = "$dir/run"
EOF
    local dest="containers-storage:[overlay@$dir/root+$dir/run]"
    bench_timed a env CONTAINERS_STORAGE_CONF="$conf" skopeo --insecure-policy copy -q \
        "oci:$LAYOUT:${IMAGES[0]}" "${dest}localhost/${IMAGES[0]}:latest"
    bench_timed b env CONTAINERS_STORAGE_CONF="$conf" skopeo --insecure-policy copy -q \
        "oci:$LAYOUT:${IMAGES[1]}" "${dest}localhost/${IMAGES[1]}:latest"
    T1=$a T2=$b CPU=$((a_cpu + b_cpu)) RSS=$((a_rss > b_rss ? a_rss : b_rss))
    # Check that the layers really went to the overlay driver.
    local n
    n=$(find "$dir/root/overlay" -mindepth 2 -maxdepth 2 -name diff -type d | wc -l)
    ((n >= 2)) || bench_die "containers-storage: expected overlay layer dirs in $dir/root/overlay, found $n"
}

# Files on disk that hold the images' file contents ("stored once").
stored_once() {
    local tool=$1 store=$2
    case $tool in
    fukastor)
        # All objects, minus the EROFS images (images/<id> links into objects/).
        local all meta
        all=$(find "$store/objects" -type f | wc -l)
        meta=$(find "$store/images" -maxdepth 1 -type l -print0 | xargs -0r readlink -f | sort -u | wc -l)
        echo $((all - meta))
        ;;
    cfsctl*)
        local id
        for id in "$store"/images/*; do
            "$CFS" --repo "$store" image-objects "${id##*/}"
        done | sort -u | wc -l
        ;;
    containers-storage)
        find "$store"/overlay/*/diff -type f -printf '%D:%i\n' | sort -u | wc -l
        ;;
    esac
}

cleanup_dir() {
    local d=$1
    [[ -e $d ]] || return 0
    # Never recurse into a mount left behind (containers-storage may mount layers).
    findmnt -rn -o TARGET | awk -v p="$d" 'index($0, p "/") == 1 || $0 == p' | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$d"
}

# --- the runs ---------------------------------------------------------------------

: >"$RESULTS"
printf 'tool\trep\tt1_us\tt2_us\tsync_us\tcpu_us\trss_kib\tdisk_bytes\tapparent_bytes\tstored_once\tload1\n' >"$RESULTS"
T_START=$(bench_now_us)
for ((rep = 1; rep <= REPS; rep++)); do
    for tool in $TOOLS; do
        dir=$WORK/$tool-$rep
        cleanup_dir "$dir"
        mkdir -p "$dir"
        printf '\n### run %d %s\n' "$rep" "$tool" >>"$BENCH_LOG"
        bench_drop_caches
        load=$(cut -d' ' -f1 /proc/loadavg)
        "run_${tool//-/_}" "$dir"
        t0=$(bench_now_us)
        sync
        tsync=$(($(bench_now_us) - t0))
        disk=$(du -sB1 "$STORE" | cut -f1)
        apparent=$(du -sB1 --apparent-size "$STORE" | cut -f1)
        once=$(stored_once "$tool" "$STORE")
        printf '%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n' "$tool" "$rep" "$T1" "$T2" "$tsync" "$CPU" "$RSS" \
            "$disk" "$apparent" "$once" "$load" >>"$RESULTS"
        bench_say "run $rep/$REPS $tool: $(bench_secs "$T1") s + $(bench_secs "$T2") s," \
            "sync $(bench_secs "$tsync") s, $(bench_mb "$disk") MB on disk, $once stored files"
        if [[ $tool == fukastor && $rep == "$REPS" ]]; then
            "$FK" --store "$STORE" --json df >"$WORK/fukastor-df.json"
            # Where fukastor's bytes go: objects that hold file contents vs EROFS images.
            find "$STORE/images" -maxdepth 1 -type l -print0 | xargs -0r readlink -f >"$WORK/fukastor-erofs.list"
            find "$STORE/objects" -type f -printf '%p %s %b\n' >"$WORK/fukastor-objects.list"
        fi
        if ((KEEP == 0 || rep < REPS)); then cleanup_dir "$dir"; fi
    done
done
T_TOTAL=$(($(bench_now_us) - T_START))

# --- report ------------------------------------------------------------------------

# median COLUMN TOOL [EXPR]: median over the runs of TOOL of a column (or awk expr).
median_of() {
    local tool=$1 expr=$2
    local -a values
    mapfile -t values < <(awk -F'\t' -v t="$tool" 'NR > 1 && $1 == t { print '"$expr"' }' "$RESULTS")
    bench_median "${values[@]}"
}

secs() { bench_secs "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

table=$WORK/table.txt
{
    printf 'tool\ttotal_s\tbase_s\t+python_s\tsync_s\tcpu_s\tRSS_MiB\tMB/s\tdisk_MB\tapparent_MB\tdisk/unique\tfiles\tstored_once\n'
    for tool in $TOOLS; do
        total=$(median_of "$tool" '$3 + $4')
        disk=$(median_of "$tool" '$8')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" \
            "$(secs "$total")" "$(secs "$(median_of "$tool" '$3')")" "$(secs "$(median_of "$tool" '$4')")" \
            "$(secs "$(median_of "$tool" '$5')")" "$(secs "$(median_of "$tool" '$6')")" \
            "$(( $(median_of "$tool" '$7') / 1024 ))" \
            "$(awk -v b="$CONTENT_BYTES" -v t="$total" 'BEGIN { printf "%.1f", b / t }')" \
            "$(bench_mb "$disk")" "$(bench_mb "$(median_of "$tool" '$9')")" \
            "$(ratio "$disk" "$UNIQUE_BYTES")" "$FILES" "$(median_of "$tool" '$10')"
    done
} | column -t -s $'\t' >"$table"

{
    echo
    echo "== import benchmark: ${IMAGES[*]} into an empty store, median of $REPS runs, $(date -u +%F)"
    echo "machine:  $(bench_machine)"
    echo "versions: $("$FK" --version) (git $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown))," \
        "${CFS:+$("$CFS" --version), }$(skopeo --version 2>/dev/null || echo 'no skopeo')"
    echo "load:     1-min load average before the runs: $(awk -F'\t' 'NR > 1 { printf "%s%s", sep, $11; sep = " " }' "$RESULTS")" \
        "(other work on the machine skews the times)"
    echo "work dir: $WORK ($(bench_fs_of "$WORK")); layout read cold (page cache dropped before each run)"
    echo "layout:   $LAYOUT, ${#LAYER_ORDER[@]} distinct layers, $(bench_mb "$COMPRESSED_BYTES") MB compressed"
    echo "uncompressed content (distinct layers' tar bytes): $(bench_mb "$CONTENT_BYTES") MB"
    echo "files in both images: $FILES regular files, $(bench_mb "${SCAN[logical]}") MB;" \
        "unique content: $(bench_mb "$UNIQUE_BYTES") MB in ${SCAN[unique_files]} distinct contents"
    echo
    cat "$table"
    echo
    if [[ -f $WORK/fukastor-df.json ]]; then
        echo "fukastor df: unique_bytes $(jq .unique_bytes "$WORK/fukastor-df.json")" \
            "(layout scan: $UNIQUE_BYTES), files_in_images $(jq .files_in_images "$WORK/fukastor-df.json")" \
            "(layout scan: $FILES), objects_referenced $(jq .objects_referenced "$WORK/fukastor-df.json")"
        awk -v unique="$UNIQUE_BYTES" '
            NR == FNR { erofs[$1] = 1; next }
            ($1 in erofs) { ea += $2; eb += $3 * 512; en++; next }
            { oa += $2; ob += $3 * 512; on++; if ($2 <= 4096) { sn++; sb += $3 * 512 } }
            END {
                printf "fukastor on disk: %d content objects %.1f MB (apparent %.1f MB, block rounding %.1f MB;", on, ob / 1e6, oa / 1e6, (ob - oa) / 1e6
                printf " %d of them <= 4 KiB take %.1f MB), %d EROFS images %.1f MB; rest (dirs, records) to du\n", sn, sb / 1e6, en, eb / 1e6
            }' "$WORK/fukastor-erofs.list" "$WORK/fukastor-objects.list"
    fi
    echo "commands of the last repetition (full output and per-run numbers: $BENCH_LOG, $RESULTS):"
    awk -v r="$REPS" '$1 == "###" { on = ($3 == r) } on && /^\$ / { print "  " $0 }' "$BENCH_LOG"
    echo "whole benchmark: $(bench_secs "$T_TOTAL") s for $REPS x {$TOOLS}"
    # The goals of the benchmark's issue.
    if [[ " $TOOLS " == *" fukastor "* ]]; then
        fk=$(median_of fukastor '$3 + $4')
        for tool in $TOOLS; do
            [[ $tool == fukastor ]] && continue
            other=$(median_of "$tool" '$3 + $4')
            verdict=no
            ((fk < other)) && verdict=yes
            echo "goal: fukastor faster than $tool: $verdict ($(secs "$fk") s vs $(secs "$other") s)"
        done
        r=$(ratio "$(median_of fukastor '$8')" "$UNIQUE_BYTES")
        ra=$(ratio "$(median_of fukastor '$9')" "$UNIQUE_BYTES")
        verdict=$(awk -v r="$r" 'BEGIN { print (r <= 1.02 ? "yes" : "no") }')
        echo "goal: fukastor bytes on disk <= unique content + 2%: $verdict (ratio $r; by apparent size $ra)"
    fi
} | tee "$WORK/report.txt"
