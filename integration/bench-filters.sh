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
# Usage: integration/bench-filters.sh [ROUNDS] [MS]   (environment: FK_BENCH_FILTERS=a,b)
set -euo pipefail
cd "$(dirname "$0")/.."

export FK_BENCH_ROUNDS="${1:-${FK_BENCH_ROUNDS:-5}}"
export FK_BENCH_MS="${2:-${FK_BENCH_MS:-200}}"

echo "[bench-filters] building (release) and running; $FK_BENCH_ROUNDS rounds of ${FK_BENCH_MS} ms per cell" >&2
out=$(cargo test --release --lib filter::bench -- --ignored --nocapture --test-threads 1 2>&1) || {
    printf '%s\n' "$out" >&2
    echo "[bench-filters] ERROR: the benchmark failed" >&2
    exit 1
}
printf '%s\n' "$out" | grep -E '^ +[a-z+-]+ +[0-9]+ KiB:' >&2 || true
echo
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%s\n' "$out" | grep '^|'
