#!/usr/bin/env bash
#
# bench-filters.sh: what running a native helper through a Lua filter costs
# over calling the same helper from Rust. Run by hand (not part of the test
# suite); about 2 minutes after the build. No root needed.
#
# What it measures
#   The ignored test filter::bench::filter_bench_dispatch (src/filter/bench.rs),
#   built in release mode. For each row it times round trips (encode, then
#   decode) of one block of text-like, compressible data at 4 KiB, 64 KiB and
#   1 MiB, each decode's output feeding the next encode:
#     native      the helpers of src/filter/native.rs called from Rust (the floor)
#     Lua         the example script of examples/filters/ run through a Chain
#                 (a fresh Lua state per thread, sandbox, limits and all)
#   Rows: none (empty chain: no Lua at all), pass-through (a script that
#   returns its input: the bare cost of two Lua calls), checksum, compress
#   (zstd level 3), encrypt (XChaCha20-Poly1305), replicate (writes a file
#   under a temporary directory), and compress+encrypt+checksum as one chain.
#   Each cell is the best of FK_BENCH_ROUNDS rounds (default 5) of at least
#   FK_BENCH_MS milliseconds (default 200); native and Lua rounds alternate,
#   so a busy machine slows both alike.
#
# Columns
#   native MB/s / Lua MB/s   plain bytes (10^6) through encode + decode per second
#   Lua overhead             native MB/s / Lua MB/s - 1: how much longer a byte takes
#   Lua cost per round trip  the difference in microseconds per block
#
# Goal: at most 10 % overhead at 64 KiB blocks and above.
#
# Part 2 (root, /dev/fuse): FUSE sequential read of a filtered tree.
#   A tree of FK_BENCH_FUSE_FILES files (default 16) of FK_BENCH_FUSE_MIB MiB
#   (default 16) of the same text-like data is committed with
#   `pull dir:… --filter …` once per row, then FK_BENCH_FUSE_ROUNDS times
#   (default 5; medians shown) mounted with `mount --fuse`, read with `cat`
#   file after file, and unmounted: a fresh mount has nothing cached, and the
#   FUSE server decodes each object whole when it is opened, so the time
#   includes decoding. The store's own files stay in the page cache (an
#   untimed first round reads them), so disk noise does not hide the
#   decoding cost. Native and Lua rounds alternate.
#     native   the same image served with FUKASTOR_BENCH_NATIVE_FILTERS=1: the
#              example filters' logic in Rust (src/filter/floor.rs), no Lua
#     Lua      the normal server: the scripts run in Lua
#   Row "none" is an unfiltered image through the same FUSE server (no
#   passthrough): the cost of FUSE alone.
#
# Part 3: volume sequential writes. The ignored test volume::tests::bench
#   (src/volume/tests/bench.rs): FK_BENCH_VOLUME_MIB MiB (default 256) of
#   1 MiB writes + flush into a filtered volume on the host filesystem
#   (TMPDIR), best of FK_BENCH_VOLUME_ROUNDS (default 3). A volume filters
#   each 4 KiB block: one chain call per block.
#     native   the same volume with its chain run by src/filter/floor.rs
#     Lua      the scripts in Lua
#
# Usage: integration/bench-filters.sh [ROUNDS] [MS]
#   environment: FK_BENCH_FILTERS=a,b (rows of part 1), FK_BENCH_SIZES=64,1024
#   (block sizes of part 1, KiB),
#   FK_BENCH_PARTS=dispatch,fuse,volume (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

export FK_BENCH_ROUNDS="${1:-${FK_BENCH_ROUNDS:-5}}"
export FK_BENCH_MS="${2:-${FK_BENCH_MS:-200}}"
parts="${FK_BENCH_PARTS:-dispatch,fuse,volume}"
has_part() { [[ ",$parts," == *",$1,"* ]]; }

echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

if has_part dispatch; then

echo "[bench-filters] building (release) and running; $FK_BENCH_ROUNDS rounds of ${FK_BENCH_MS} ms per cell" >&2
out=$(cargo test --release --lib filter::bench -- --ignored --nocapture --test-threads 1 2>&1) || {
    printf '%s\n' "$out" >&2
    echo "[bench-filters] ERROR: the benchmark failed" >&2
    exit 1
}
printf '%s\n' "$out" | grep -E '^ +[a-z+-]+ +[0-9]+ KiB:' >&2 || true
echo
echo "## Lua dispatch (library, round trips of one block)"
echo
printf '%s\n' "$out" | grep '^|'
fi

if has_part fuse; then
    [[ $(id -u) == 0 ]] || { echo "[bench-filters] ERROR: part fuse needs root (drop_caches, FUSE mounts)" >&2; exit 1; }
    [[ -c /dev/fuse ]] || { echo "[bench-filters] ERROR: /dev/fuse is missing" >&2; exit 1; }
    cargo build --release >&2
    fk="$PWD/target/release/fukastor"
    ex="$PWD/examples/filters"
    files="${FK_BENCH_FUSE_FILES:-16}" mib="${FK_BENCH_FUSE_MIB:-16}" rounds="${FK_BENCH_FUSE_ROUNDS:-5}"
    work=$(mktemp -d /var/tmp/fk-bench-filters.XXXXXX)
    mnt="$work/mnt"
    cleanup() {
        mountpoint -q "$mnt" && { "$fk" --store "$work/store" umount "$mnt" || umount -l "$mnt"; }
        rm -rf "$work"
    }
    trap cleanup EXIT
    mkdir -p "$work/src" "$mnt" "$work/replica"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/key"
    # Text-like data (zstd level 3 makes it about 4x smaller), the same in every file.
    python3 - "$work/src/f0" "$mib" <<'PY'
import random, sys
words = [b"the ", b"store ", b"object ", b"layer ", b"block ", b"volume ", b"image ",
         b"zstd ", b"lua ", b"filter ", b"fukastor ", b"\n", b"0x", b"42 ", b"= ", b"{ ", b"} "]
rng = random.Random(7)
out, n = [], 0
want = int(sys.argv[2]) << 20
while n < want:
    w = words[rng.randrange(len(words))]
    out.append(w); n += len(w)
open(sys.argv[1], "wb").write(b"".join(out)[:want])
PY
    # Distinct files (distinct objects): a different first line in each.
    for i in $(seq 1 $((files - 1))); do
        { printf 'file %d\n' "$i"; tail -c +$((${#i} + 7)) "$work/src/f0"; } > "$work/src/f$i"
    done
    total=$((files * mib))
    enc="$ex/encrypt.lua,key_file=$work/key"
    rep="$ex/replicate.lua,dir=$work/replica"
    declare -A rows=(
        [none]=""
        [checksum]="--filter $ex/checksum.lua"
        [compress]="--filter $ex/compress.lua,level=3"
        [encrypt]="--filter $enc"
        [replicate]="--filter $rep"
        [compress+encrypt+checksum]="--filter $ex/compress.lua --filter $enc --filter $ex/checksum.lua"
    )
    order=(none checksum compress encrypt replicate compress+encrypt+checksum)
    median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
    # One timed read: mount (natively or with Lua), cat every file, unmount.
    # The FUSE mount is new, so nothing of it is cached and every object is
    # decoded; the store's files stay in the page cache (warmed by an untimed
    # first round), so the disk's noise does not hide the decoding cost.
    read_once() {   # $1 image, $2 native (0/1): prints MB/s (10^6)
        local t0 t1
        FUKASTOR_BENCH_NATIVE_FILTERS=$2 "$fk" --store "$work/store" -q mount "$1" "$mnt" --fuse >&2
        t0=$(date +%s.%N)
        cat "$mnt"/f* > /dev/null
        t1=$(date +%s.%N)
        "$fk" --store "$work/store" umount "$mnt" >&2
        echo "$total $t0 $t1" | awk '{printf "%.1f\n", $1 * 1048576 / 1e6 / ($3 - $2)}'
    }
    echo >&2 "[bench-filters] FUSE: $files files x $mib MiB, $rounds reads per cell (native and Lua alternating)"
    table=$'| filter | native MB/s | Lua MB/s | Lua overhead |\n|---|---:|---:|---:|'
    for row in "${order[@]}"; do
        img="img:${row//+/-}"
        # shellcheck disable=SC2086
        "$fk" --store "$work/store" -q pull "dir:$work/src" "$img" ${rows[$row]} > /dev/null
        read_once "$img" 0 > /dev/null   # warms the store's files
        nat=() lua=()
        for r in $(seq "$rounds"); do
            lua+=("$(read_once "$img" 0)")
            [[ $row == none ]] || nat+=("$(read_once "$img" 1)")
        done
        l=$(printf '%s\n' "${lua[@]}" | median)
        if [[ $row == none ]]; then
            table+=$'\n'"| none (FUSE only) | $l | $l | — |"
            continue
        fi
        n=$(printf '%s\n' "${nat[@]}" | median)
        over=$(awk -v n="$n" -v l="$l" 'BEGIN {printf "%+.1f %%", (n / l - 1) * 100}')
        table+=$'\n'"| $row | $n | $l | $over |"
        echo >&2 "[bench-filters] $row: native $n MB/s (${nat[*]}), Lua $l MB/s (${lua[*]})"
    done
    echo
    echo "## FUSE sequential read of a filtered tree ($files files x $mib MiB, fresh mount, store files cached, median of $rounds)"
    echo
    echo "$table"
fi

if has_part volume; then
    echo >&2 "[bench-filters] volume writes"
    vout=$(FK_BENCH_MIB="${FK_BENCH_VOLUME_MIB:-256}" FK_BENCH_ROUNDS="${FK_BENCH_VOLUME_ROUNDS:-3}" FK_BENCH_FILTERS= \
        cargo test --release --lib volume::tests::bench -- --ignored --nocapture --test-threads 1 2>&1) || {
        printf '%s\n' "$vout" >&2
        echo "[bench-filters] ERROR: the volume benchmark failed" >&2
        exit 1
    }
    echo
    echo "## Volume sequential writes (4 KiB blocks, ${FK_BENCH_VOLUME_MIB:-256} MiB, best of ${FK_BENCH_VOLUME_ROUNDS:-3})"
    echo
    printf '%s\n' "$vout" | grep '^|'
fi
