#!/usr/bin/env bash
#
# bench-fuse.sh: how fast a fukastor image reads through each way of serving
# it: the kernel's composefs stack (the floor), fukastor's FUSE server with and
# without passthrough, and composefs's own FUSE mount (cfsctl) as the peer.
# Run by hand as root (not part of the test suite); takes about 5 minutes
# (8 with --reps 5), plus about one minute the first time to build the image.
#
# The image
#   `bookworm` from integration/fixtures.sh (debootstrap --variant=minbase,
#   ~7k paths) plus one layer holding /bench/random-1g: SIZE bytes of
#   /dev/urandom (1 GiB by default; random, so nothing compresses or dedups).
#   It is built once as an OCI layout (skopeo copy of the fixture, then
#   `umoci raw add-layer`) in $WORK/layout, tag `bench`, and kept across runs
#   (--rebuild makes it again). Every run imports that one layout into a fresh
#   fukastor store and a fresh cfsctl repository, so all columns serve the
#   same tree.
#
# Columns (one mount at a time, mountpoints under $WORK/mnt)
#   kernel            fukastor --store S mount bench MP --kernel
#                     (file-backed EROFS + overlayfs, objects as data-only lower)
#   fuse              fukastor --store S mount bench MP --fuse
#   fuse-passthrough  fukastor --store S mount bench MP --fuse=passthrough
#   cfsctl-fuse       cfsctl --repo R oci mount bench MP --fuse yes
#                     (crate composefs-ctl 0.9, repository made with
#                     `cfsctl init --insecure R` + `cfsctl --repo R --insecure
#                     oci pull oci:LAYOUT:bench bench`). As root, cfsctl 0.9
#                     serves the EROFS metadata through FUSE and stacks an
#                     overlayfs on it whose data-only lower is the objects
#                     directory: file data bypasses its FUSE server.
#   fuse-user         fukastor --fuse, mounted and read by an unprivileged user
#                     ($BENCH_USER, default nobody) from a store it owns
#   cfsctl-user       cfsctl --fuse yes, mounted and read by that user from a
#                     repository it owns: without CAP_SYS_ADMIN cfsctl 0.9 serves
#                     file data through its FUSE server (one thread, fuser's
#                     default options), so this is the FUSE server-to-server
#                     comparison. The user cannot read some files (tar counts
#                     them), so the two user columns read the same files as
#                     each other, not as the root columns.
#   fukastor's FUSE servers run with their default thread count (one per core).
#
# Rows (per column: mount, run the tests in this order, read the server's
# memory, unmount)
#   cold = `sync; echo 3 > /proc/sys/vm/drop_caches`, then one timed run.
#   warm = right after the cold run, one more untimed pass (the same command;
#          `cat FILE` for fio), then the timed run: the data has been read
#          twice, so the page cache is in its steady state (the first re-read
#          of freshly cached pages also pays for activating them on the LRU).
#   seq read          dd if=MP/bench/random-1g of=/dev/null bs=1M; SIZE / wall time, MB/s
#   4k rand read      fio --rw=randread --bs=4k --ioengine=psync --numjobs=2
#                     --size=SIZE/2 --offset_increment=SIZE/2 --readonly --invalidate=0
#                     (buffered, fio's default POSIX_FADV_RANDOM; each job in its own
#                     half of the file); IOPS of both jobs.
#                     cold: --io_size=SIZE/8 per job: a quarter of the file's blocks,
#                     each read once (a time-based cold run on this fast disk ends up
#                     with the whole file cached and measures mostly hits);
#                     warm: --runtime=$RUNTIME --time_based, after `cat FILE`.
#                     The report shows the MiB read from disk during the cold run
#                     (readahead below the FUSE file shows up there).
#   find+stat         find MP -xdev -print0 | xargs -0 stat -c '%i %s %h %u %g %f %Y'
#                     >/dev/null; wall s. Warm: mean of $WALK_LOOPS runs (one
#                     run is ~50 ms, too short to time alone on a busy machine).
#   tar               tar --ignore-failed-read -cf - -C MP . | wc -c; wall s (reads every
#                     file, 1 GiB included; unreadable files are counted and shown)
#   server RSS        VmRSS of the FUSE server process (/proc/PID/status) after all the
#                     tests above (the walks last); pid from `fukastor --json mounts`,
#                     for cfsctl the `cfsctl --internal-fuse-serve` process
#   server CPU        utime+stime of the server process over all the tests, and per test
#   disk reads        pgpgin from /proc/vmstat over each cold test (system-wide)
#   Each figure is the median of $REPS rounds; a round mounts each column in turn
#   (interleaved, so slow phases of a shared machine hit every column alike).
#   MB = 10^6 bytes. Ratios are against the kernel column (>1 is faster for
#   MB/s and IOPS, slower for times). The goals (from the issue) are checked at
#   the end: passthrough seq read >= 0.95x kernel, warm find+stat <= 1.2x kernel,
#   plain FUSE seq read >= 0.60x kernel, fukastor ahead of cfsctl in every row
#   (checked for --fuse=passthrough and for --fuse against cfsctl as root, and
#   for fuse-user against cfsctl-user).
#
# Usage: integration/bench-fuse.sh [--reps N]
#                                  [--kinds "kernel fuse passthrough cfsctl fuse-user cfsctl-user"]
#                                  [--size-mib N] [--runtime SECONDS]
#                                  [--no-install] [--rebuild] [--keep]
#   --reps      rounds (default 3)
#   --kinds     columns to run (default: all six)
#   --size-mib  size of the big file in MiB (default 1024; changing it rebuilds the layout)
#   --runtime   seconds of each warm fio run (default 10)
#   --rebuild   build the layout again
#   --keep      keep the store and the repository (in $WORK) after the run
# Environment:
#   FUKASTOR_FIXTURES         fixtures directory (default /var/tmp/fukastor-fixtures)
#   FUKASTOR_BENCH_FUSE_DIR   work directory (default /var/tmp/fukastor-bench-fuse)
#   BENCH_USER                the unprivileged user of the *-user columns (default nobody)
#   FUKASTOR_BIN              fukastor binary (default: cargo build --release)
#   CFSCTL                    cfsctl binary (default: cfsctl in PATH or ~/.cargo/bin;
#                             installed with cargo when missing)
# Output: the table on stdout; raw figures in $WORK/results.tsv, every command's
# output in $WORK/bench.log.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BENCH_NAME=bench-fuse
# shellcheck source=lib/bench-common.sh
source "$HERE/lib/bench-common.sh"

FIX=${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}
FIX=${FIX%/}
WORK=${FUKASTOR_BENCH_FUSE_DIR:-/var/tmp/fukastor-bench-fuse}
WORK=${WORK%/}
REPS=3
WALK_LOOPS=5
KINDS="kernel fuse passthrough cfsctl fuse-user cfsctl-user"
SIZE_MIB=1024
RUNTIME=10
INSTALL=1
REBUILD=0
KEEP=0
CFSCTL_VERSION='^0.9'
BIG=bench/random-1g

while (($#)); do
    case $1 in
    --reps) REPS=$2; shift 2 ;;
    --kinds) KINDS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --rebuild) REBUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '3,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || bench_die "--reps wants a positive number"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || bench_die "--size-mib wants a positive number"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || bench_die "--runtime wants a positive number"
for k in $KINDS; do
    [[ $k == @(kernel|fuse|passthrough|cfsctl|fuse-user|cfsctl-user) ]] || bench_die "unknown kind $k"
done
ALL_KINDS=(kernel fuse passthrough cfsctl fuse-user cfsctl-user)
read -r -a RUN_KINDS <<<"$KINDS"
SIZE=$((SIZE_MIB << 20))

[[ $EUID -eq 0 ]] || bench_die "must run as root (drop_caches, kernel mounts, passthrough)"

mkdir -p "$WORK"
BENCH_LOG=$WORK/bench.log
: >"$BENCH_LOG"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
T_START=$(bench_now_us)

kind_title() {
    case $1 in
    kernel) echo kernel ;;
    fuse) echo fuse ;;
    passthrough) echo fuse-passthrough ;;
    cfsctl) echo cfsctl-fuse ;;
    fuse-user) echo fuse-user ;;
    cfsctl-user) echo cfsctl-fuse-user ;;
    esac
}

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

cfsctl_ok() {
    local v
    [[ -n $1 && -x $1 ]] || return 1
    v=$("$1" --version 2>/dev/null) || return 1
    [[ $v == "cfsctl 0.9."* ]]
}

install_tools() {
    bench_apt_install fio jq skopeo umoci tar findutils coreutils util-linux procps
    if [[ -z ${FUKASTOR_BIN:-} ]]; then
        bench_say "cargo build --release (fukastor)"
        (cd "$REPO" && cargo build --release --quiet) >>"$BENCH_LOG" 2>&1 ||
            bench_die "cargo build --release failed (see $BENCH_LOG)"
    fi
    if [[ " $KINDS " == *" cfsctl"* ]] && ! cfsctl_ok "$(find_cfsctl)"; then
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
# Copies in $WORK/bin, which the unprivileged user can also run.
mkdir -p "$WORK/bin"
chmod 755 "$WORK" "$WORK/bin"
cp "$FK" "$WORK/bin/fukastor.new"
mv "$WORK/bin/fukastor.new" "$WORK/bin/fukastor"
FK=$WORK/bin/fukastor
CFS=$(find_cfsctl)
if [[ -n $CFS && -x $CFS ]]; then
    cp "$CFS" "$WORK/bin/cfsctl.new"
    mv "$WORK/bin/cfsctl.new" "$WORK/bin/cfsctl"
    CFS=$WORK/bin/cfsctl
fi
BENCH_USER=${BENCH_USER:-nobody}
AS_USER=()
if [[ " $KINDS " == *"-user "* ]]; then
    BUID=$(id -u "$BENCH_USER") || bench_die "no user $BENCH_USER (set BENCH_USER)"
    BGID=$(id -g "$BENCH_USER")
    ((BUID != 0)) || bench_die "BENCH_USER must not be root"
    command -v setpriv >/dev/null || bench_die "setpriv is missing (util-linux)"
    command -v fusermount3 >/dev/null || bench_die "fusermount3 is missing (package fuse3)"
    AS_USER=(setpriv "--reuid=$BUID" "--regid=$BGID" --clear-groups --reset-env --)
fi
if [[ " $KINDS " == *" cfsctl"* ]]; then
    cfsctl_ok "$CFS" || bench_die "no cfsctl 0.9 found (run without --no-install, or set CFSCTL)"
    # cfsctl 0.9 mounts through FUSE only when built with its `fuse` feature (a default one).
    "$CFS" oci mount --help 2>/dev/null | grep -q -- '--fuse' ||
        bench_die "$CFS has no FUSE mount (was it built without the 'fuse' feature?)"
fi
for t in fio jq skopeo umoci findmnt; do
    command -v "$t" >/dev/null || bench_die "$t is missing (run without --no-install)"
done

# --- the image ----------------------------------------------------------------------

LAYOUT=$WORK/layout
FIX_LAYOUT=$FIX/oci
if [[ -z $(oci_manifest_of "$FIX_LAYOUT" bookworm 2>/dev/null) ]]; then
    bench_say "no bookworm fixture in $FIX_LAYOUT: running integration/fixtures.sh"
    FUKASTOR_FIXTURES=$FIX "$HERE/fixtures.sh" >&2 || bench_die "integration/fixtures.sh failed"
fi
BASE_DIGEST=$(oci_manifest_of "$FIX_LAYOUT" bookworm)
LAYOUT_STAMP="base $BASE_DIGEST, /$BIG $SIZE bytes of /dev/urandom, layout v2"

build_layout() {
    local tmp=$WORK/layout.tmp stage=$WORK/stage
    rm -rf "$tmp" "$stage"
    bench_say "building the image: bookworm + /$BIG ($SIZE_MIB MiB of /dev/urandom)"
    skopeo --insecure-policy copy -q "oci:$FIX_LAYOUT:bookworm" "oci:$tmp:bookworm" >>"$BENCH_LOG" 2>&1 ||
        bench_die "skopeo copy of the bookworm fixture failed (see $BENCH_LOG)"
    mkdir -p "$stage/${BIG%/*}"
    head -c "$SIZE" /dev/urandom >"$stage/$BIG"
    chmod 0755 "$stage/${BIG%/*}"
    chmod 0644 "$stage/$BIG"
    tar --create --file="$stage.tar" --numeric-owner --owner=0 --group=0 \
        --no-recursion --directory="$stage" "${BIG%/*}" "$BIG"
    rm -rf "$stage"
    umoci raw add-layer --image "$tmp:bookworm" --tag bench \
        --history.created_by "integration/bench-fuse.sh" "$stage.tar" >>"$BENCH_LOG" 2>&1 ||
        bench_die "umoci raw add-layer failed (see $BENCH_LOG)"
    rm -f "$stage.tar"
    echo "$LAYOUT_STAMP" >"$tmp/BENCH-STAMP"
    rm -rf "$LAYOUT"
    mv "$tmp" "$LAYOUT"
}

if ((REBUILD)) || [[ "$(cat "$LAYOUT/BENCH-STAMP" 2>/dev/null)" != "$LAYOUT_STAMP" ]]; then
    build_layout
fi
chmod -R a+rX "$LAYOUT" # umoci writes 0600 files; the user columns import it too

# --- mounts -------------------------------------------------------------------------

STORE=$WORK/store
CREPO=$WORK/cfs-repo
STORE_U=$WORK/store-user
CREPO_U=$WORK/cfs-repo-user
MNT=$WORK/mnt
SERVER_PID=
# The command prefix that runs a test as the column's user (empty: root).
RUNAS=()

# Unmount whatever is left below $MNT (an interrupted run), servers first by pid.
cleanup_mounts() {
    local m
    for m in $(findmnt -rn -o TARGET | awk -v p="$MNT/" 'index($0, p) == 1' | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

# The pid of the `cfsctl --internal-fuse-serve` process serving MP.
cfsctl_server_pid() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null) || continue
        if grep -qx -- --internal-fuse-serve <<<"$cmd" && grep -qxF -- "$1" <<<"$cmd"; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

# mount_kind KIND MP: mount the bench image; sets SERVER_PID (empty for kernel)
# and RUNAS.
mount_kind() {
    local kind=$1 mp=$2
    SERVER_PID=
    RUNAS=()
    [[ $kind != *-user ]] || RUNAS=("${AS_USER[@]}")
    mkdir -p "$mp"
    [[ $kind != *-user ]] || chown "$BUID:$BGID" "$mp"
    printf '\n$ mount %s at %s\n' "$kind" "$mp" >>"$BENCH_LOG"
    case $kind in
    kernel) "$FK" --store "$STORE" mount bench "$mp" --kernel >>"$BENCH_LOG" 2>&1 ;;
    fuse) "$FK" --store "$STORE" mount bench "$mp" --fuse >>"$BENCH_LOG" 2>&1 ;;
    passthrough) "$FK" --store "$STORE" mount bench "$mp" --fuse=passthrough >>"$BENCH_LOG" 2>&1 ;;
    cfsctl) "$CFS" --repo "$CREPO" oci mount bench "$mp" --fuse yes >>"$BENCH_LOG" 2>&1 ;;
    fuse-user) "${RUNAS[@]}" "$FK" --store "$STORE_U" mount bench "$mp" --fuse >>"$BENCH_LOG" 2>&1 ;;
    cfsctl-user) "${RUNAS[@]}" "$CFS" --repo "$CREPO_U" oci mount bench "$mp" --fuse yes >>"$BENCH_LOG" 2>&1 ;;
    esac || bench_die "mounting $kind at $mp failed (see $BENCH_LOG)"
    case $kind in
    fuse | passthrough | fuse-user)
        local store=$STORE
        [[ $kind != fuse-user ]] || store=$STORE_U
        SERVER_PID=$("${RUNAS[@]}" "$FK" --store "$store" --json mounts |
            jq -r --arg m "$mp" '.[] | select(.mountpoint == $m) | .pid // empty')
        [[ -n $SERVER_PID ]] || bench_die "fukastor --json mounts names no server for $mp"
        ;;
    cfsctl | cfsctl-user)
        SERVER_PID=$(cfsctl_server_pid "$mp") || bench_die "no cfsctl FUSE server found for $mp"
        ;;
    esac
    "${RUNAS[@]}" test -f "$mp/$BIG" || bench_die "$mp/$BIG is missing after mounting $kind"
}

umount_kind() {
    local kind=$1 mp=$2 i
    case $kind in
    cfsctl | cfsctl-user) umount "$mp" >>"$BENCH_LOG" 2>&1 ;;
    fuse-user) "${AS_USER[@]}" "$FK" --store "$STORE_U" umount "$mp" >>"$BENCH_LOG" 2>&1 ;;
    *) "$FK" --store "$STORE" umount "$mp" >>"$BENCH_LOG" 2>&1 ;;
    esac || bench_die "unmounting $kind at $mp failed (see $BENCH_LOG)"
    [[ -n $SERVER_PID ]] || return 0
    # Wait for the server to go (a zombie counts as gone); stop it if it lingers.
    for ((i = 0; i < 100; i++)); do
        [[ -d /proc/$SERVER_PID && $(awk '{print $3}' "/proc/$SERVER_PID/stat" 2>/dev/null) != Z ]] || return 0
        sleep 0.1
    done
    bench_say "WARNING: $kind server $SERVER_PID still runs 10 s after unmounting; sending SIGTERM"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
}

trap 'cleanup_mounts' EXIT
trap 'exit 130' INT TERM
cleanup_mounts

# --- stores ---------------------------------------------------------------------------

bench_say "importing the image into a fresh fukastor store and cfsctl repository"
rm -rf "$STORE" "$CREPO" "$STORE_U" "$CREPO_U"
"$FK" --store "$STORE" -q pull "oci:$LAYOUT:bench" bench >>"$BENCH_LOG" 2>&1 ||
    bench_die "fukastor pull failed (see $BENCH_LOG)"
if [[ " $KINDS " == *" cfsctl "* ]]; then
    "$CFS" init --insecure "$CREPO" >>"$BENCH_LOG" 2>&1 || bench_die "cfsctl init failed (see $BENCH_LOG)"
    "$CFS" --repo "$CREPO" --insecure oci pull "oci:$LAYOUT:bench" bench >>"$BENCH_LOG" 2>&1 ||
        bench_die "cfsctl oci pull failed (see $BENCH_LOG)"
fi
# The user columns: a store and a repository the user made and owns.
mkdir -p "$MNT"
chmod 755 "$MNT"
if [[ " $KINDS " == *" fuse-user "* ]]; then
    install -d -o "$BUID" -g "$BGID" "$STORE_U"
    "${AS_USER[@]}" "$FK" --store "$STORE_U" -q pull "oci:$LAYOUT:bench" bench >>"$BENCH_LOG" 2>&1 ||
        bench_die "fukastor pull as $BENCH_USER failed (see $BENCH_LOG)"
fi
if [[ " $KINDS " == *" cfsctl-user "* ]]; then
    install -d -o "$BUID" -g "$BGID" "$CREPO_U"
    "${AS_USER[@]}" "$CFS" init --insecure "$CREPO_U" >>"$BENCH_LOG" 2>&1 ||
        bench_die "cfsctl init as $BENCH_USER failed (see $BENCH_LOG)"
    "${AS_USER[@]}" "$CFS" --repo "$CREPO_U" --insecure oci pull "oci:$LAYOUT:bench" bench >>"$BENCH_LOG" 2>&1 ||
        bench_die "cfsctl oci pull as $BENCH_USER failed (see $BENCH_LOG)"
fi
sync

# --- measurements -----------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)
server_cpu_ms() { # utime + stime of the whole process, ms
    [[ -n $SERVER_PID && -r /proc/$SERVER_PID/stat ]] || { echo 0; return; }
    awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%d", ($12 + $13) * 1000 / hz }' "/proc/$SERVER_PID/stat"
}

record() { printf '%s\t%s\t%s\t%s\n' "$REP" "$KIND" "$1" "$2" >>"$RESULTS"; }

TIMED=
# timed N CMD...: run CMD N times; mean wall time of one run in microseconds
# into TIMED, stdout of the last run into TIMED_OUT.
timed() {
    local n=$1 i t0 t1 out rc=0
    shift
    printf '\n$ %s   (x%d)\n' "$*" "$n" >>"$BENCH_LOG"
    t0=$(bench_now_us)
    for ((i = 0; i < n; i++)); do
        out=$("$@" 2>>"$BENCH_LOG") || rc=$?
        ((rc == 0)) || break
    done
    t1=$(bench_now_us)
    ((rc == 0)) || bench_die "$KIND: '$*' failed (exit $rc; see $BENCH_LOG)"
    TIMED=$(((t1 - t0) / n))
    TIMED_OUT=$out
}

do_dd() { "${RUNAS[@]}" dd if="$1" of=/dev/null bs=1M status=none; }
do_cat() { "${RUNAS[@]}" cat "$1" >/dev/null; }
# (The user of the *-user columns cannot enter some directories: find's
# complaints are not a failure there.)
do_walk() {
    { "${RUNAS[@]}" find "$1" -xdev -print0 2>>"$BENCH_LOG" || ((${#RUNAS[@]})); } |
        "${RUNAS[@]}" xargs -0 -r stat -c '%i %s %h %u %g %f %Y' >/dev/null
}
# tar: files it cannot read are counted (TAR_ERRORS file), not fatal, so that
# one column's unreadable files do not stop the run; the report names them.
do_tar() {
    "${RUNAS[@]}" tar --ignore-failed-read -cf - -C "$1" . 2>>"$TAR_ERRORS" | wc -c
}
# do_fio cold|warm FILE: 4 KiB random reads by 2 jobs, each in its own half of
# the file (so neither reads what the other just cached). Cold: a fixed count
# of reads, a quarter of the file (each block at most once), so the page cache
# stays mostly empty; warm: $RUNTIME seconds over the cached file.
do_fio() {
    local json half=$((SIZE / 2))
    local -a amount
    if [[ $1 == cold ]]; then
        amount=(--io_size=$((SIZE / 8)))
    else
        amount=(--runtime="$RUNTIME" --time_based)
    fi
    json=$("${RUNAS[@]}" fio --name=rr --filename="$2" --rw=randread --bs=4k --size="$half" \
        --offset_increment="$half" "${amount[@]}" --ioengine=psync --numjobs=2 --group_reporting \
        --readonly --invalidate=0 --output-format=json 2>>"$BENCH_LOG") || return 1
    jq -r '.jobs[0].read.iops | floor' <<<"$json"
}

pgpgin() { awk '/^pgpgin / { print $2 }' /proc/vmstat; } # KiB read from block devices, system-wide

# run_test NAME cold|warm LOOPS [--warm-up CMD ARG] CMD ARGS...: one timed test.
#   cold: drop caches, run CMD once.
#   warm: run the warm-up (default: CMD itself) untimed, then CMD LOOPS times
#         (the mean is recorded); the cold run before it was the first pass.
# Records NAME_TEMP_us, the server's CPU time (cpu_NAME_TEMP, ms) and the
# system's block reads (io_NAME_TEMP, KiB) over the timed runs.
run_test() {
    local name=$1 temp=$2 loops=$3 c0 io0
    shift 3
    local -a warmup=()
    if [[ $1 == --warm-up ]]; then
        warmup=("$2" "$3")
        shift 3
    fi
    ((${#warmup[@]})) || warmup=("$@")
    if [[ $temp == cold ]]; then
        bench_drop_caches
    else
        "${warmup[@]}" >/dev/null 2>>"$BENCH_LOG" || true
    fi
    c0=$(server_cpu_ms) io0=$(pgpgin)
    timed "$loops" "$@"
    record "io_${name}_$temp" $(($(pgpgin) - io0))
    record "cpu_${name}_$temp" $(($(server_cpu_ms) - c0))
    record "${name}_${temp}_us" "$TIMED"
}

measure() {
    local mp=$1 file=$1/$BIG c_all
    c_all=$(server_cpu_ms)
    run_test seq cold 1 do_dd "$file"
    run_test seq warm 1 do_dd "$file"

    run_test rr cold 1 do_fio cold "$file"
    record rr_cold_iops "$TIMED_OUT"
    run_test rr warm 1 --warm-up do_cat "$file" do_fio warm "$file"
    record rr_warm_iops "$TIMED_OUT"

    run_test walk cold 1 do_walk "$mp"
    run_test walk warm "$WALK_LOOPS" do_walk "$mp"

    TAR_ERRORS=$(mktemp)
    run_test tar cold 1 do_tar "$mp"
    record tar_bytes "$TIMED_OUT"
    record tar_errors "$(grep -c '^tar: ' "$TAR_ERRORS" || true)"
    cat "$TAR_ERRORS" >>"$BENCH_LOG"
    : >"$TAR_ERRORS"
    run_test tar warm 1 do_tar "$mp"
    cat "$TAR_ERRORS" >>"$BENCH_LOG"
    rm -f "$TAR_ERRORS"

    record entries "$("${RUNAS[@]}" find "$mp" -xdev 2>/dev/null | wc -l)"
    if [[ -n $SERVER_PID ]]; then
        record rss_kib "$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")"
        record cpu_all_ms $(($(server_cpu_ms) - c_all))
    fi
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
bench_say "load average at start: $LOAD_START"
for ((REP = 1; REP <= REPS; REP++)); do
    for KIND in "${RUN_KINDS[@]}"; do
        bench_say "round $REP/$REPS: $(kind_title "$KIND") (load $(cut -d' ' -f1 /proc/loadavg))"
        mp=$MNT/$KIND
        mount_kind "$KIND" "$mp"
        measure "$mp"
        umount_kind "$KIND" "$mp"
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(bench_now_us)

# Server logs: a passthrough server that fell back to plain reads says so.
if [[ " $KINDS " == *" passthrough "* ]] &&
    grep -hs -e 'passthrough is not available' -e 'does not offer passthrough' \
        "$STORE"/fukastor/mounts/*.log >/dev/null 2>&1; then
    PT_NOTE="WARNING: a passthrough server logged that passthrough was not available"
else
    PT_NOTE=
fi

# --- report -------------------------------------------------------------------------------

# med KIND METRIC: median over the rounds, empty when not measured.
med() {
    local -a v
    mapfile -t v < <(awk -F'\t' -v k="$1" -v m="$2" '$2 == k && $3 == m { print $4 }' "$RESULTS")
    ((${#v[@]})) || return 0
    bench_median "${v[@]}"
}

# fmt KIND ROW: the cell for a row; also sets NUM (a number for ratios).
fmt() {
    local kind=$1 row=$2 v
    NUM=
    case $row in
    seq_cold | seq_warm)
        v=$(med "$kind" "${row}_us")
        [[ -n $v ]] && NUM=$(awk -v b="$SIZE" -v us="$v" 'BEGIN { printf "%.1f", b / us }')
        echo "${NUM:--}"
        ;;
    rr_cold | rr_warm)
        v=$(med "$kind" "${row}_iops")
        NUM=$v
        echo "${v:--}"
        ;;
    walk_* | tar_cold | tar_warm)
        v=$(med "$kind" "${row}_us")
        [[ -n $v ]] && NUM=$(awk -v us="$v" 'BEGIN { printf "%.3f", us / 1e6 }')
        echo "${NUM:--}"
        ;;
    rss)
        v=$(med "$kind" rss_kib)
        if [[ $kind == kernel ]]; then echo "n/a (no server)"; return; fi
        [[ -n $v ]] && NUM=$(awk -v k="$v" 'BEGIN { printf "%.1f", k / 1024 }')
        echo "${NUM:--}"
        ;;
    cpu)
        v=$(med "$kind" cpu_all_ms)
        if [[ $kind == kernel ]]; then echo "n/a"; return; fi
        [[ -n $v ]] && NUM=$(awk -v ms="$v" 'BEGIN { printf "%.2f", ms / 1000 }')
        echo "${NUM:--}"
        ;;
    tar_bytes | tar_errors | entries)
        v=$(med "$kind" "$row")
        echo "${v:--}"
        ;;
    esac
}

ROWS=(seq_cold seq_warm rr_cold rr_warm walk_cold walk_warm tar_cold tar_warm rss cpu tar_bytes tar_errors entries)
declare -A LABEL=(
    [seq_cold]="seq read 1 GiB, cold (MB/s)" [seq_warm]="seq read 1 GiB, warm (MB/s)"
    [rr_cold]="4k random read, cold (IOPS)" [rr_warm]="4k random read, warm (IOPS)"
    [walk_cold]="find+stat all, cold (s)" [walk_warm]="find+stat all, warm (s)"
    [tar_cold]="tar cf - | wc -c, cold (s)" [tar_warm]="tar cf - | wc -c, warm (s)"
    [rss]="server RSS after walks (MiB)" [cpu]="server CPU, all tests (s)"
    [tar_bytes]="tar stream (bytes)" [tar_errors]="files tar could not read"
    [entries]="entries (find -xdev)"
)
[[ $SIZE_MIB == 1024 ]] || { LABEL[seq_cold]="seq read $SIZE_MIB MiB, cold (MB/s)"; LABEL[seq_warm]="seq read $SIZE_MIB MiB, warm (MB/s)"; }
declare -A CELL VAL
declare -A DIRS=([seq_cold]=1 [seq_warm]=1 [rr_cold]=1 [rr_warm]=1 [walk_cold]=-1 [walk_warm]=-1
    [tar_cold]=-1 [tar_warm]=-1 [rss]=-1)
for row in "${ROWS[@]}"; do
    for k in "${ALL_KINDS[@]}"; do
        if [[ " $KINDS " == *" $k "* ]]; then
            fmt "$k" "$row" >/dev/null # sets NUM in this shell
            CELL[$row,$k]=$(fmt "$k" "$row")
            VAL[$row,$k]=$NUM
        else
            CELL[$row,$k]="not run"
            VAL[$row,$k]=
        fi
    done
done

ratio() { # ratio ROW KIND: value / kernel value
    local a=${VAL[$1,$2]} b=${VAL[$1,kernel]}
    [[ -n $a && -n $b ]] || { echo "-"; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) print "-"; else printf "%.2fx", a / b }'
}

GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then GIT_REV+=" (+ uncommitted changes)"; fi

{
    echo "# fukastor FUSE serving benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine:  $(bench_machine)"
    echo "store:    $WORK ($(bench_fs_of "$WORK"))"
    echo "fukastor: $GIT_REV; $( [[ -n $CFS ]] && "$CFS" --version 2>/dev/null || echo 'cfsctl not used'); $(fio --version)"
    echo "image:    bookworm minbase + /$BIG ($SIZE_MIB MiB random), $(med "${RUN_KINDS[0]}" entries) entries"
    echo "load:     $LOAD_START at start, $LOAD_END at end (loadavg 1/5/15 min)"
    echo "runs:     median of $REPS rounds; warm fio runtime ${RUNTIME}s; whole run $(bench_secs $((T_END - T_START))) s"
    [[ -z $PT_NOTE ]] || echo "$PT_NOTE"
    echo
    printf '| %-32s |' ""
    for k in "${ALL_KINDS[@]}"; do printf ' %16s |' "$(kind_title "$k")"; done
    echo
    printf '|%s|' "$(printf -- '-%.0s' {1..34})"
    for k in "${ALL_KINDS[@]}"; do printf '%s:|' "$(printf -- '-%.0s' {1..17})"; done
    echo
    for row in "${ROWS[@]}"; do
        printf '| %-32s |' "${LABEL[$row]}"
        for k in "${ALL_KINDS[@]}"; do printf ' %16s |' "${CELL[$row,$k]}"; done
        echo
    done
    echo
    echo "vs kernel (value / kernel value; MB/s and IOPS: higher is better, seconds: lower is better)"
    for row in seq_cold seq_warm rr_cold rr_warm walk_cold walk_warm tar_cold tar_warm; do
        printf '| %-32s |' "${LABEL[$row]}"
        for k in "${ALL_KINDS[@]}"; do printf ' %16s |' "$(ratio "$row" "$k")"; done
        echo
    done
    echo
    echo "MiB read from disk during each cold test (median; /proc/vmstat pgpgin, whole machine)"
    for t in seq_cold rr_cold walk_cold tar_cold; do
        printf '| %-32s |' "$t"
        for k in "${ALL_KINDS[@]}"; do
            if [[ " $KINDS " != *" $k "* ]]; then v=; else v=$(med "$k" "io_$t"); fi
            [[ -z $v ]] || v=$((v / 1024))
            printf ' %16s |' "${v:--}"
        done
        echo
    done
    echo
    echo "server CPU time per test, ms (median)"
    for t in seq_cold seq_warm rr_cold rr_warm walk_cold walk_warm tar_cold tar_warm; do
        printf '| %-32s |' "$t"
        for k in "${ALL_KINDS[@]}"; do
            if [[ $k == kernel || " $KINDS " != *" $k "* ]]; then v=-; else v=$(med "$k" "cpu_$t"); fi
            printf ' %16s |' "${v:--}"
        done
        echo
    done
    echo

    # Goals.
    goal() { # goal TEXT OK(0/1/"") DETAIL
        local verdict
        case $2 in 1) verdict=MET ;; 0) verdict="NOT MET" ;; *) verdict="not measured" ;; esac
        printf '  %-7s  %s (%s)\n' "$verdict" "$1" "$3"
    }
    cmp_ratio() { # cmp_ratio ROW KIND OP LIMIT -> 1/0/""
        local a=${VAL[$1,$2]} b=${VAL[$1,kernel]}
        [[ -n $a && -n $b ]] || { echo; return; }
        awk -v a="$a" -v b="$b" -v op="$3" -v l="$4" \
            'BEGIN { r = a / b; print (op == ">=" ? r >= l : r <= l) ? 1 : 0 }'
    }
    both() { # both OK1 OK2
        if [[ -z $1 || -z $2 ]]; then echo; elif [[ $1 == 1 && $2 == 1 ]]; then echo 1; else echo 0; fi
    }
    echo "goals"
    g=$(both "$(cmp_ratio seq_cold passthrough '>=' 0.95)" "$(cmp_ratio seq_warm passthrough '>=' 0.95)")
    goal "passthrough seq read >= 0.95x kernel" "$g" "cold $(ratio seq_cold passthrough), warm $(ratio seq_warm passthrough)"
    g=$(both "$(cmp_ratio walk_warm fuse '<=' 1.2)" "$(cmp_ratio walk_warm passthrough '<=' 1.2)")
    goal "warm find+stat <= 1.2x kernel" "$g" "fuse $(ratio walk_warm fuse), passthrough $(ratio walk_warm passthrough)"
    g=$(both "$(cmp_ratio seq_cold fuse '>=' 0.60)" "$(cmp_ratio seq_warm fuse '>=' 0.60)")
    goal "plain FUSE seq read >= 0.60x kernel" "$g" "cold $(ratio seq_cold fuse), warm $(ratio seq_warm fuse)"
    for pair in passthrough:cfsctl fuse:cfsctl fuse-user:cfsctl-user; do
        k=${pair%:*} peer=${pair#*:}
        ahead=0 total=0 behind=()
        for row in seq_cold seq_warm rr_cold rr_warm walk_cold walk_warm tar_cold tar_warm rss; do
            a=${VAL[$row,$k]} b=${VAL[$row,$peer]}
            [[ -n $a && -n $b ]] || continue
            total=$((total + 1))
            if awk -v a="$a" -v b="$b" -v d="${DIRS[$row]}" 'BEGIN { exit !(d > 0 ? a > b : a < b) }'; then
                ahead=$((ahead + 1))
            else
                behind+=("$row")
            fi
        done
        if ((total == 0)); then g=; elif ((ahead == total)); then g=1; else g=0; fi
        goal "$(kind_title "$k") ahead of $(kind_title "$peer") in every row" "$g" \
            "ahead in $ahead of $total rows${behind[*]:+; behind in: ${behind[*]}}"
    done
} | tee "$WORK/report.txt"

if ((!KEEP)); then rm -rf "$STORE" "$CREPO" "$STORE_U" "$CREPO_U"; fi
bench_say "done in $(bench_secs $((T_END - T_START))) s; report in $WORK/report.txt, raw figures in $RESULTS, log in $BENCH_LOG"
