#!/usr/bin/env bash
#
# bench-volume.sh: what fukastor's thin copy-on-write volumes cost next to
# their peers: snapshot and rollback time against the size of the data,
# container create/remove time, and block I/O speed on a volume against a
# plain loop file. Run by hand as root (not part of the test suite). With the
# defaults (sizes 1 4 8 GiB, 5 runs, 20 containers, 5 s fio tests) it takes
# about 60 minutes and needs about 55 GiB free below $BENCH_DIR.
#
# Part "snapshot": snapshot and rollback after N GiB written, N in $BENCH_SIZES
#   Every column writes N GiB with fio (sequential 1 MiB direct writes,
#   --refill_buffers: no two blocks alike) and then times its snapshot, and its
#   restore. One size at a time, one column after the other (each column's data
#   is deleted before the next one starts, to bound the disk used).
#   Before every timed step: `sync`, drop_caches, then `fukastor --version`,
#   `qemu-img --version`, `cp --version` (untimed: the programs themselves are
#   read back in, a cold 50 MB binary is not what is measured).
#     fukastor  `volume create V --size N+1G`, `volume attach`, mkfs.ext4, mount,
#               then per run r:
#                 write N GiB into the file data (overwriting it after run 1), a
#                 4 KiB marker "sR" at its start, `sync -f` the ext4 (untimed);
#                 TIMED `fukastor --version` (process start: the floor of any
#                 fukastor command, shown as a row of its own);
#                 TIMED `fukastor snapshot create V --name sR` (without --atomic);
#                 write N GiB over the file again (so the head holds N GiB that
#                 the rollback discards), umount, `volume detach` (timed apart);
#                 TIMED `fukastor snapshot rollback V sR` (the rollback command
#                 only: it is refused while the volume is attached, so the
#                 umount + detach before it and attach + mount after it are not
#                 in this figure; attach and detach get rows of their own);
#                 `volume attach`, mount, check that the marker reads "sR" again
#                 (a mismatch is reported); `snapshot rm V s(R-1)` (untimed; a
#                 refusal is reported, not fatal).
#               The first attach (empty volume) is shown apart.
#     cp -a     the plain-directory backend: the container's upper directory is a
#               directory on the host filesystem holding the file data (N GiB,
#               written once); per run:
#                 TIMED `cp -a upper snap && sync -f snap` (a snapshot that is
#                 on disk when the step ends, like the other two);
#                 TIMED `rm -rf upper && cp -a snap upper && sync -f upper`;
#                 rm -rf snap (untimed). The restore always deletes and copies
#                 N GiB, so no second write is needed before it.
#     qemu-img  a qcow2 image (`qemu-img create -f qcow2 IMG N+1G`, 64 KiB
#               clusters) holding the same amount of data, written with
#               `qemu-io -c 'write -P PATTERN OFFSET 256M' ...` (qemu-io cannot
#               write a file's contents and there is no NBD here); per run:
#                 write N GiB (pattern per run); TIMED `qemu-img snapshot -c sR IMG`;
#                 write N GiB again; TIMED `qemu-img snapshot -a sR IMG`;
#                 `qemu-img snapshot -d s(R-1) IMG` (untimed).
#
# Part "container": $BENCH_CONTAINERS containers in a row from the `bookworm`
#   image of integration/fixtures.sh (debootstrap minbase; the fixtures are
#   built when missing), pulled once with `fukastor pull oci:LAYOUT:bookworm`.
#   All are created (and left mounted), then all are removed. Each column
#   starts after `sync` and drop_caches (no writeback left from earlier parts).
#     fukastor  TIMED `fukastor create bookworm --name cI` + `fukastor container
#               mount cI` (each also on its own); a check that the rootfs holds
#               etc/debian_version (untimed); then TIMED `fukastor container
#               umount cI` + `fukastor rm cI`.
#     overlay on a directory (the plain-directory backend, no volume): TIMED
#               `fukastor mount bookworm LOWER --kernel`, mkdir upper work,
#               `mount -t overlay` (lower = the image mount); remove: TIMED
#               umount overlay, `fukastor umount LOWER`, rm -rf.
#     loop + mkfs.ext4 (what a volume without the pre-formatted template would
#               do): TIMED truncate a sparse file of the fukastor volume's size,
#               `losetup --direct-io=on --sector-size 4096`, mkfs.ext4 (its
#               defaults: lazy inode tables), mount, then as the overlay column;
#               remove: TIMED umount overlay, umount ext4, `losetup -d`,
#               `fukastor umount LOWER`, rm.
#   Figures: median, worst and first of create+mount and of umount+rm.
#
# Part "fio": block I/O on ext4 on a fukastor volume against ext4 on a plain
#   loop file on the same disk (`losetup --direct-io=on --sector-size 4096`,
#   the way `volume attach` binds its loop device). Both: a sparse device of
#   $BENCH_FIO_MIB MiB + 1 GiB, mkfs.ext4 -E nodiscard,lazy_itable_init=0,
#   lazy_journal_init=0 (no background inode-table writes during the tests),
#   one file of $BENCH_FIO_MIB MiB written in full first (untimed). Tests, in
#   this order, each fio --direct=1 --ioengine=libaio --iodepth=$BENCH_FIO_IODEPTH
#   --numjobs=1 --time_based --runtime=$BENCH_FIO_RUNTIME --ramp_time=1
#   --randrepeat=0 on that file, after `sync` and drop_caches:
#     seq read 1 MiB, 4 KiB random read, 4 KiB random write,
#     4 KiB random write with --fdatasync=$BENCH_FIO_SYNC_EVERY, seq write 1 MiB
#   (reads first, so that after a snapshot they read the sealed layer).
#   Why the synced row: direct I/O on the plain loop goes to the disk, while
#   fukastor's volume server may keep writes in the host page cache until the
#   next flush (it fdatasyncs on flush); fdatasync makes both pay for durability.
#   Rounds: $BENCH_FIO_RUNS "before" rounds (plain loop, then fukastor with the
#   file's blocks in the volume's head layer), then $BENCH_FIO_RUNS "after"
#   rounds: `fukastor snapshot create` (untimed) right before each fukastor
#   round, so the file's blocks are in sealed layers and writes go to a new
#   head (copy-on-write); the plain loop runs again in each after round.
#   The plain loop column is the median of all its rounds; ratios are
#   fukastor / plain loop (MB/s for sequential, IOPS for random).
#   After each after round, snapshots during heavy writeback: a sequential
#   1 MiB write runs in the background (as the seq write test), and 3 s into
#   it three TIMED `snapshot create` (1 s apart), then their TIMED `snapshot rm`.
#
# Part "reopen": attaching a volume that holds N GiB (N in $BENCH_SIZES) that
#   were written without a snapshot, against binding a loop device to a plain
#   file holding the same (what a volume's attach costs on top of that floor).
#     fukastor  `volume create V --size N+1G`, attach, fio writes N GiB straight
#               into the device (as `fill` above), `volume detach`, then wait
#               until the volume server has exited (so that whatever it does
#               after a detach is done); per run r: wait until the server has
#               exited, `settle`, TIMED `volume attach` (cold: it starts the
#               server too), detach, TIMED `volume attach` (warm: the server
#               runs, the layer and index files are in the page cache), detach.
#     losetup   a sparse file of N+1 GiB, fio writes N GiB into it; per run:
#               `settle`, TIMED `losetup --direct-io=on --sector-size 4096 -f
#               --show FILE` (cold), `losetup -d`, TIMED again (warm), `losetup -d`.
#   Opening a volume replays its head's records but reads a sealed layer's
#   index file; the volume server seals a head of 16 MiB or more when the
#   volume is detached (docs/design.md, "A large head is sealed by itself").
#
# Environment (all optional):
#   BENCH_DIR           where everything goes (default /var/tmp/fukastor-bench-volume);
#                       the data lives in $BENCH_DIR/work, which is removed on exit
#                       (also on errors and Ctrl-C: filesystems unmounted, volumes
#                       detached, loop devices removed); bench.log (every command
#                       and its output), results.tsv (every figure of every run)
#                       and report.txt (the tables) stay in $BENCH_DIR
#   BENCH_PARTS         parts to run (default "snapshot container fio reopen")
#   BENCH_SIZES         GiB written before the snapshots and before reopening (default "1 4 8")
#   BENCH_RUNS          runs per size and column (default 5); medians are shown
#   BENCH_CONTAINERS    containers in a row (default 20)
#   BENCH_FIO_RUNS      fio rounds per phase (default $BENCH_RUNS)
#   BENCH_FIO_RUNTIME   seconds per fio test (default 5)
#   BENCH_FIO_MIB       size of the fio file in MiB (default 1024)
#   BENCH_FIO_IODEPTH   fio iodepth (default 8)
#   BENCH_FIO_SYNC_EVERY  fdatasync every N writes in the synced random-write row (default 32)
#   BENCH_FUKASTOR      0: run the peer columns only (default 1)
#   BENCH_KEEP          1: keep $BENCH_DIR/work (unmounted and detached) at the end
#   FUKASTOR_BIN        fukastor binary (default: cargo build --release, then a
#                       private copy of target/release/fukastor)
#   FUKASTOR_FIXTURES   fixtures directory (default /var/tmp/fukastor-fixtures)
# Usage: integration/bench-volume.sh [--help]
# Output: the report on stdout (and in $BENCH_DIR/report.txt); progress on stderr.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BENCH_NAME=bench-volume
# shellcheck source=lib/bench-common.sh
source "$HERE/lib/bench-common.sh"

case ${1:-} in
-h | --help) sed -n '3,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
'') ;;
*) bench_die "no arguments taken, settings come from the environment (see --help)" ;;
esac

BENCH_DIR=${BENCH_DIR:-/var/tmp/fukastor-bench-volume}
BENCH_DIR=${BENCH_DIR%/}
PARTS=${BENCH_PARTS:-snapshot container fio reopen}
SIZES=${BENCH_SIZES:-1 4 8}
RUNS=${BENCH_RUNS:-5}
NCTR=${BENCH_CONTAINERS:-20}
FIO_RUNS=${BENCH_FIO_RUNS:-$RUNS}
FIO_RUNTIME=${BENCH_FIO_RUNTIME:-5}
FIO_MIB=${BENCH_FIO_MIB:-1024}
FIO_QD=${BENCH_FIO_IODEPTH:-8}
FIO_SYNC_EVERY=${BENCH_FIO_SYNC_EVERY:-32}
WITH_FK=${BENCH_FUKASTOR:-1}
KEEP=${BENCH_KEEP:-0}
FIX=${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}
FIX=${FIX%/}

for v in RUNS NCTR FIO_RUNS FIO_RUNTIME FIO_MIB FIO_QD FIO_SYNC_EVERY; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || bench_die "$v wants a positive number, not '${!v}'"
done
read -r -a SIZE_LIST <<<"$SIZES"
((${#SIZE_LIST[@]})) || bench_die "BENCH_SIZES is empty"
for s in "${SIZE_LIST[@]}"; do
    [[ $s =~ ^[1-9][0-9]*$ ]] || bench_die "BENCH_SIZES wants whole GiB, not '$s'"
done
for p in $PARTS; do
    [[ $p == @(snapshot|container|fio|reopen) ]] || bench_die "unknown part '$p' in BENCH_PARTS"
done
[[ $WITH_FK == [01] && $KEEP == [01] ]] || bench_die "BENCH_FUKASTOR and BENCH_KEEP take 0 or 1"
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

[[ $EUID -eq 0 ]] || bench_die "must run as root (loop devices, mounts, drop_caches)"
[[ $BENCH_DIR == /* && $BENCH_DIR != / ]] || bench_die "BENCH_DIR must be an absolute path"

mkdir -p "$BENCH_DIR"
# Canonical: the volume server runs with the canonical store path, which
# server_gone looks for in its command line.
BENCH_DIR=$(realpath "$BENCH_DIR")
WORK=$BENCH_DIR/work
STORE=$WORK/store
MNT=$WORK/mnt
BENCH_LOG=$BENCH_DIR/bench.log
: >"$BENCH_LOG"
RESULTS=$BENCH_DIR/results.tsv
printf 'part\tcolumn\tsize\trun\tmetric\tvalue\n' >"$RESULTS"
FK=

# --- cleanup ------------------------------------------------------------------------

# Everything this script mounts, attaches or binds lives below $WORK: unmount the
# filesystems (not the FUSE ones), detach fukastor's volumes, remove the loop
# devices left, unmount the rest (the volume server's FUSE mount), stop a volume
# server that outlived its mount, remove $WORK.
cleanup() {
    local m t pid i
    set +e
    [[ -d $WORK ]] || return 0
    for i in 1 2 3; do
        while read -r m t; do
            [[ -n $m && $t != fuse* ]] || continue
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        done < <(bench_mounts_under "$WORK")
    done
    if [[ -n $FK && -x $FK && -d $STORE/fukastor/pool ]]; then
        for m in $(timeout 60 "$FK" --store "$STORE" --json volume ls 2>/dev/null |
            jq -r '.[]? | select(.device != null) | .name' 2>/dev/null); do
            timeout 60 "$FK" --store "$STORE" volume detach "$m" >>"$BENCH_LOG" 2>&1 ||
                bench_say "cleanup: volume detach $m failed"
        done
    fi
    for m in $(bench_loops_under "$WORK"); do losetup -d "$m" 2>/dev/null; done
    while read -r m t; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done < <(bench_mounts_under "$WORK")
    # The server exits by itself a moment after its last volume is detached.
    pid=$(jq -r '.pid // empty' "$STORE/fukastor/vserve/server.json" 2>/dev/null)
    if [[ $pid =~ ^[0-9]+$ ]]; then
        for ((i = 0; i < 50; i++)); do
            grep -q fukastor "/proc/$pid/cmdline" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q fukastor "/proc/$pid/cmdline" 2>/dev/null; then
            bench_say "cleanup: the volume server $pid still runs 5 s after the last detach; stopping it"
            kill -TERM "$pid" 2>/dev/null
        fi
    fi
    if ((KEEP)); then
        bench_say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup # leftovers of an interrupted run
rm -rf "$WORK"
mkdir -p "$WORK" "$MNT"

# --- tools --------------------------------------------------------------------------

bench_apt_install fio jq qemu-utils e2fsprogs util-linux coreutils
if ((WITH_FK)); then
    if [[ -z ${FUKASTOR_BIN:-} ]]; then
        bench_say "cargo build --release (fukastor)"
        (cd "$REPO" && cargo build --release --quiet) >>"$BENCH_LOG" 2>&1 ||
            bench_die "cargo build --release failed (see $BENCH_LOG)"
    fi
    FK=${FUKASTOR_BIN:-$REPO/target/release/fukastor}
    [[ -x $FK ]] || bench_die "no fukastor binary at $FK"
    # Benchmark a private copy: a concurrent `cargo build` may replace target/release.
    mkdir -p "$WORK/bin"
    cp "$FK" "$WORK/bin/fukastor"
    FK=$WORK/bin/fukastor
    "$FK" volume --help >/dev/null 2>&1 ||
        bench_die "$FK has no 'volume' command yet (BENCH_FUKASTOR=0 runs the peers only)"
fi

# The revision the binary was built from (the tree may change during a long run).
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then GIT_REV+=" (+ uncommitted changes)"; fi
if [[ -n ${FUKASTOR_BIN:-} ]]; then GIT_REV="$FUKASTOR_BIN (tree at $GIT_REV)"; fi

fk() { "$FK" --store "$STORE" "$@"; }
if ((WITH_FK)); then printf '# fk = %s --store %s\n' "$FK" "$STORE" >>"$BENCH_LOG"; fi

# Free space: the snapshot part holds at most about 3x the largest size at once
# (fukastor: sealed layer + head + the file system), the others a few GiB.
MAX_GIB=0
for s in "${SIZE_LIST[@]}"; do ((s > MAX_GIB)) && MAX_GIB=$s; done
NEED_GIB=$((FIO_MIB * (FIO_RUNS + 2) / 1024 + 2))
if has_part snapshot && ((3 * MAX_GIB + 2 > NEED_GIB)); then NEED_GIB=$((3 * MAX_GIB + 2)); fi
if has_part reopen && ((2 * MAX_GIB + 2 > NEED_GIB)); then NEED_GIB=$((2 * MAX_GIB + 2)); fi
FREE_GIB=$(($(df --output=avail -B1 "$WORK" | tail -n1) >> 30))
((FREE_GIB >= NEED_GIB)) || bench_die "$FREE_GIB GiB free below $WORK, this run needs about $NEED_GIB GiB"

# --- helpers ------------------------------------------------------------------------

record() { # record PART COLUMN SIZE RUN METRIC VALUE
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}
values() { # values PART COLUMN SIZE METRIC: every run's value, one a line (SIZE "all": any)
    awk -F'\t' -v p="$1" -v c="$2" -v s="$3" -v m="$4" \
        '$1 == p && $2 == c && (s == "all" || $3 == s) && $5 == m { print $6 }' "$RESULTS"
}
med() { # med PART COLUMN SIZE METRIC: median, empty when not measured
    local -a v
    mapfile -t v < <(values "$@")
    ((${#v[@]})) || return 0
    bench_median "${v[@]}"
}
worst() {
    local -a v
    mapfile -t v < <(values "$@")
    ((${#v[@]})) || return 0
    bench_max "${v[@]}"
}
first() { values "$@" | head -n1; }
cell_ms() { if [[ -n $1 ]]; then bench_ms "$1"; else echo "-"; fi; }

NOTES=()
note() { NOTES+=("$*"); bench_say "NOTE: $*"; }

# Settle before a timed step: write back everything, empty the page cache,
# then read the programs back in (a cold 50 MB binary is not what is measured).
settle() {
    bench_drop_caches
    if [[ -n $FK ]]; then "$FK" --version >/dev/null; fi
    qemu-img --version >/dev/null
    cp --version >/dev/null
    losetup --version >/dev/null
}

MKFS_OPTS=(-q -F -E 'nodiscard,lazy_itable_init=0,lazy_journal_init=0')

# fill FILE MIB PART COLUMN SIZE RUN: write MIB MiB sequentially (1 MiB direct
# writes, fresh random data in every block), fsync at the end; the write speed
# goes to results.tsv as fill_MBps.
fill() {
    local f=$1 mib=$2 json
    json=$(mktemp)
    printf '\n$ fio fill %s (%s MiB)\n' "$f" "$mib" >>"$BENCH_LOG"
    fio --name=fill --filename="$f" --rw=write --bs=1M --size="${mib}M" --direct=1 \
        --ioengine=libaio --iodepth=4 --refill_buffers --end_fsync=1 \
        --output-format=json --output="$json" >>"$BENCH_LOG" 2>&1 || {
        cat "$json" >>"$BENCH_LOG"
        rm -f "$json"
        bench_die "fio writing $f failed (see $BENCH_LOG)"
    }
    record "$3" "$4" "$5" "$6" fill_MBps "$(jq -r '.jobs[0].write.bw_bytes / 1e6 | floor' "$json")"
    rm -f "$json"
}

# marker FILE TEXT: TEXT in the first 4 KiB block of FILE (direct I/O);
# read_marker FILE: that text back.
marker() {
    printf '%s\n' "$2" | dd of="$1" bs=4096 count=1 conv=notrunc,sync oflag=direct status=none
}
read_marker() {
    dd if="$1" bs=4096 count=1 iflag=direct status=none | tr -d '\0' | head -n1
}

mount_ext4() { # mount_ext4 DEV DIR
    mkdir -p "$2"
    mount -t ext4 "$1" "$2" >>"$BENCH_LOG" 2>&1 || bench_die "mount $1 on $2 failed (see $BENCH_LOG)"
}

ATTACHED=
attach() { # attach VOLUME: the device path in ATTACHED
    ATTACHED=$(fk volume attach "$1") || return 1
    ATTACHED=$(tail -n1 <<<"$ATTACHED")
    [[ -b $ATTACHED ]] || { echo "volume attach printed '$ATTACHED', not a block device"; return 1; }
    echo "$ATTACHED"
}

# --- part 1: snapshot and rollback --------------------------------------------------------

snap_fukastor() {
    local n=$1 r vol=bench-snap-${1}g mp=$MNT/snap-fukastor us got
    bench_run_us us fk volume create "$vol" --size "$((n + 1))G"
    bench_run_us us attach "$vol"
    record snapshot fukastor "$n" 0 attach_empty_us "$us"
    mkfs.ext4 "${MKFS_OPTS[@]}" "$ATTACHED" >>"$BENCH_LOG" 2>&1 || bench_die "mkfs.ext4 $ATTACHED failed"
    mount_ext4 "$ATTACHED" "$mp"
    for ((r = 1; r <= RUNS; r++)); do
        bench_say "snapshot, $n GiB, fukastor, run $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        fill "$mp/data" $((n * 1024)) snapshot fukastor "$n" "$r"
        marker "$mp/data" "s$r"
        bench_run_us us sync -f "$mp"
        record snapshot fukastor "$n" "$r" syncfs_us "$us"
        settle
        bench_run_us us "$FK" --version
        record snapshot fukastor "$n" "$r" floor_us "$us"
        bench_run_us us fk snapshot create "$vol" --name "s$r"
        record snapshot fukastor "$n" "$r" snapshot_us "$us"
        fill "$mp/data" $((n * 1024)) snapshot fukastor-dirty "$n" "$r"
        umount "$mp"
        bench_run_us us fk volume detach "$vol"
        record snapshot fukastor "$n" "$r" detach_us "$us"
        settle
        bench_run_us us fk snapshot rollback "$vol" "s$r"
        record snapshot fukastor "$n" "$r" rollback_us "$us"
        bench_run_us us attach "$vol"
        record snapshot fukastor "$n" "$r" attach_us "$us"
        mount_ext4 "$ATTACHED" "$mp"
        got=$(read_marker "$mp/data")
        if [[ $got != "s$r" ]]; then
            note "fukastor $n GiB run $r: after rollback to s$r the file starts with '$got', not 's$r'"
            record snapshot fukastor "$n" "$r" marker_mismatch 1
        fi
        if ((r > 1)); then
            printf '\n$ %s\n' "fukastor snapshot rm $vol s$((r - 1))" >>"$BENCH_LOG"
            fk snapshot rm "$vol" "s$((r - 1))" >>"$BENCH_LOG" 2>&1 ||
                note "fukastor snapshot rm $vol s$((r - 1)) failed (the head sits on s$r; see $BENCH_LOG)"
        fi
    done
    {
        printf '\n# %s after the runs: ' "$vol"
        fk --json volume ls | jq -c --arg v "$vol" '.[] | select(.name == $v)'
        du -sh --apparent-size "$STORE/fukastor/pool"
        du -sh "$STORE/fukastor/pool"
    } >>"$BENCH_LOG" 2>&1 || true
    umount "$mp"
    bench_run_us us fk volume detach "$vol"
    bench_run_us us fk volume rm "$vol"
}

cp_snapshot() { cp -a "$1" "$2" && sync -f "$2"; }
cp_restore() { rm -rf "$1" && cp -a "$2" "$1" && sync -f "$1"; }

snap_cp() {
    local n=$1 r d=$WORK/cp us
    mkdir -p "$d/upper"
    fill "$d/upper/data" $((n * 1024)) snapshot cp "$n" 0
    for ((r = 1; r <= RUNS; r++)); do
        bench_say "snapshot, $n GiB, cp -a, run $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        settle
        bench_run_us us cp_snapshot "$d/upper" "$d/snap"
        record snapshot cp "$n" "$r" snapshot_us "$us"
        settle
        bench_run_us us cp_restore "$d/upper" "$d/snap"
        record snapshot cp "$n" "$r" rollback_us "$us"
        rm -rf "$d/snap"
    done
    rm -rf "$d"
}

qemu_fill() { # qemu_fill IMG GIB PATTERN: GIB GiB of PATTERN, in 256 MiB writes
    local -a cmds=()
    local off
    for ((off = 0; off < $2 * 4; off++)); do
        cmds+=(-c "write -P $3 $((off * 256))M 256M")
    done
    printf '\n$ qemu-io -f qcow2 %s (%s x write -P %s OFFSET 256M)\n' "$1" "${#cmds[@]}" "$3" >>"$BENCH_LOG"
    qemu-io -f qcow2 "${cmds[@]}" "$1" >>"$BENCH_LOG" 2>&1 || bench_die "qemu-io writing $1 failed (see $BENCH_LOG)"
}

snap_qemu() {
    local n=$1 r d=$WORK/qemu us img
    img=$d/disk.qcow2
    mkdir -p "$d"
    qemu-img create -q -f qcow2 "$img" "$((n + 1))G" >>"$BENCH_LOG" 2>&1 || bench_die "qemu-img create failed"
    for ((r = 1; r <= RUNS; r++)); do
        bench_say "snapshot, $n GiB, qemu-img, run $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        qemu_fill "$img" "$n" $((0x10 + r))
        settle
        bench_run_us us qemu-img snapshot -c "s$r" "$img"
        record snapshot qemu "$n" "$r" snapshot_us "$us"
        qemu_fill "$img" "$n" $((0x80 + r))
        settle
        bench_run_us us qemu-img snapshot -a "s$r" "$img"
        record snapshot qemu "$n" "$r" rollback_us "$us"
        if ((r > 1)); then
            bench_run_us us qemu-img snapshot -d "s$((r - 1))" "$img"
        fi
    done
    { qemu-img info "$img"; du -sh "$img"; } >>"$BENCH_LOG" 2>&1 || true
    rm -rf "$d"
}

part_snapshot() {
    local n
    for n in "${SIZE_LIST[@]}"; do
        if ((WITH_FK)); then snap_fukastor "$n"; fi
        snap_cp "$n"
        snap_qemu "$n"
    done
}

# --- part 2: containers -------------------------------------------------------------------

CTR_SIZE=
ROOTFS=
ctr_fk_create() { fk create bookworm --name "$1"; }
ctr_fk_mount() {
    ROOTFS=$(fk container mount "$1") || return 1
    ROOTFS=$(tail -n1 <<<"$ROOTFS")
    echo "$ROOTFS"
}

ctr_fukastor() {
    local i c a b us
    for ((i = 1; i <= NCTR; i++)); do
        c=bench-c$i
        bench_run_us a ctr_fk_create "$c"
        bench_run_us b ctr_fk_mount "$c"
        record container fukastor - "$i" create_us "$a"
        record container fukastor - "$i" mount_us "$b"
        record container fukastor - "$i" up_us $((a + b))
        [[ -f $ROOTFS/etc/debian_version ]] ||
            bench_die "container $c: no etc/debian_version in the rootfs '$ROOTFS'"
    done
    CTR_SIZE=$(fk --json volume ls | jq -r '[.[] | select(.name | startswith("ctr."))][0].size // empty')
    fk ps >>"$BENCH_LOG" 2>&1 || true
    for ((i = 1; i <= NCTR; i++)); do
        c=bench-c$i
        bench_run_us a fk container umount "$c"
        bench_run_us b fk rm "$c"
        record container fukastor - "$i" umount_us "$a"
        record container fukastor - "$i" rm_us "$b"
        record container fukastor - "$i" down_us $((a + b))
    done
}

# ovl_up DIR [DEV]: the image at DIR/lower (kernel), an overlay at DIR/rootfs
# whose upper and work are in DIR/up (a directory, or DEV's ext4 mounted there).
ovl_up() {
    local d=$1
    mkdir -p "$d/lower" "$d/up" "$d/rootfs" || return 1
    "$FK_MOUNT" --store "$STORE" mount bookworm "$d/lower" --kernel || return 1
    mkdir -p "$d/up/upper" "$d/up/work" || return 1
    mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/up/upper,workdir=$d/up/work" "$d/rootfs"
}
ovl_down() {
    umount "$1/rootfs" && "$FK_MOUNT" --store "$STORE" umount "$1/lower"
}
ctr_dir_up() { ovl_up "$1"; }
ctr_dir_down() { ovl_down "$1" && rm -rf "$1"; }
LOOPDEV=
ctr_mkfs_up() {
    local d=$1
    mkdir -p "$d/up" && truncate -s "$CTR_SIZE" "$d/disk.img" || return 1
    LOOPDEV=$(losetup --direct-io=on --sector-size 4096 -f --show "$d/disk.img") || return 1
    echo "$LOOPDEV" >"$d/dev"
    mkfs.ext4 -q -F "$LOOPDEV" && mount -t ext4 "$LOOPDEV" "$d/up" && ovl_up "$d"
}
ctr_mkfs_down() {
    local d=$1
    ovl_down "$d" && umount "$d/up" && losetup -d "$(cat "$d/dev")" && rm -rf "$d"
}

ctr_peer() { # ctr_peer COLUMN UPFN DOWNFN
    local col=$1 i d us
    for ((i = 1; i <= NCTR; i++)); do
        d=$WORK/ctr-$col/c$i
        bench_run_us us "$2" "$d"
        record container "$col" - "$i" up_us "$us"
        [[ -f $d/rootfs/etc/debian_version ]] || bench_die "$col container $i: no etc/debian_version"
    done
    for ((i = 1; i <= NCTR; i++)); do
        d=$WORK/ctr-$col/c$i
        bench_run_us us "$3" "$d"
        record container "$col" - "$i" down_us "$us"
    done
    rm -rf "$WORK/ctr-$col"
}

part_container() {
    if [[ -z $(oci_manifest_of "$FIX/oci" bookworm 2>/dev/null) ]]; then
        bench_say "no bookworm fixture in $FIX/oci: running integration/fixtures.sh"
        FUKASTOR_FIXTURES=$FIX "$HERE/fixtures.sh" >&2 || bench_die "integration/fixtures.sh failed"
    fi
    # The peers mount the image with fukastor too (its kernel composefs mount,
    # the same lower layer as fukastor's containers); without BENCH_FUKASTOR
    # they need a fukastor binary all the same.
    FK_MOUNT=$FK
    if [[ -z $FK_MOUNT ]]; then
        FK_MOUNT=${FUKASTOR_BIN:-$REPO/target/release/fukastor}
        [[ -x $FK_MOUNT ]] || bench_die "the container peers need a fukastor binary for the image mount ($FK_MOUNT)"
        mkdir -p "$WORK/bin"
        cp "$FK_MOUNT" "$WORK/bin/fukastor-mount"
        FK_MOUNT=$WORK/bin/fukastor-mount
    fi
    bench_run_us us "$FK_MOUNT" --store "$STORE" -q pull "oci:$FIX/oci:bookworm" bookworm
    record container pull - 0 pull_us "$us"
    # Each column starts with nothing left to write back (the snapshot part
    # leaves gigabytes of dirty pages behind, which slow every fsync).
    if ((WITH_FK)); then
        settle
        bench_say "containers: fukastor, $NCTR in a row"
        ctr_fukastor
    fi
    [[ -n $CTR_SIZE ]] || CTR_SIZE=10G
    record container mkfs - 0 volume_bytes "$CTR_SIZE"
    settle
    bench_say "containers: overlay on a directory, $NCTR in a row"
    ctr_peer dir ctr_dir_up ctr_dir_down
    settle
    bench_say "containers: loop file + mkfs.ext4 (size $CTR_SIZE), $NCTR in a row"
    ctr_peer mkfs ctr_mkfs_up ctr_mkfs_down
}

# --- part 3: fio ------------------------------------------------------------------------------

FIO_FILE=bench.fio
FIO_TESTS=(seqread randread randwrite randwritesync seqwrite)
declare -A FIO_BS=([seqread]=1M [seqwrite]=1M [randread]=4k [randwrite]=4k [randwritesync]=4k)
declare -A FIO_RW=([seqread]=read [seqwrite]=write [randread]=randread [randwrite]=randwrite [randwritesync]=randwrite)
declare -A FIO_DIR=([seqread]=read [seqwrite]=write [randread]=read [randwrite]=write [randwritesync]=write)
declare -A FIO_EXTRA=([randwritesync]=--fdatasync=$FIO_SYNC_EVERY)

fio_tests() { # fio_tests COLUMN RUN DIR
    local t json
    local -a extra
    for t in "${FIO_TESTS[@]}"; do
        extra=()
        [[ -z ${FIO_EXTRA[$t]:-} ]] || extra=("${FIO_EXTRA[$t]}")
        settle
        json=$(mktemp)
        printf '\n$ fio %s %s on %s\n' "$t" "${FIO_BS[$t]}" "$3/$FIO_FILE" >>"$BENCH_LOG"
        fio --name="$t" --filename="$3/$FIO_FILE" --rw="${FIO_RW[$t]}" --bs="${FIO_BS[$t]}" \
            --size="${FIO_MIB}M" --direct=1 --ioengine=libaio --iodepth="$FIO_QD" --numjobs=1 \
            --time_based --runtime="$FIO_RUNTIME" --ramp_time=1 --randrepeat=0 "${extra[@]}" \
            --output-format=json --output="$json" >>"$BENCH_LOG" 2>&1 || {
            cat "$json" >>"$BENCH_LOG"
            rm -f "$json"
            bench_die "fio $t on $3 failed (see $BENCH_LOG)"
        }
        record fio "$1" - "$2" "${t}_MBps" "$(jq -r ".jobs[0].${FIO_DIR[$t]}.bw_bytes / 1e6 | floor" "$json")"
        record fio "$1" - "$2" "${t}_iops" "$(jq -r ".jobs[0].${FIO_DIR[$t]}.iops | floor" "$json")"
        jq -c "{test: \"$t\", lat_us: (.jobs[0].${FIO_DIR[$t]}.clat_ns.percentile // {} | with_entries(.value /= 1000))}" \
            "$json" >>"$BENCH_LOG" 2>&1 || true
        rm -f "$json"
    done
}

# snapshot_under_load RUN DIR: three snapshots (then their removal) while a
# sequential 1 MiB write runs on DIR's volume, each timed as a whole command.
snapshot_under_load() {
    local i us pid
    printf '\n$ fio seqwrite in the background, snapshots during it (round %s)\n' "$1" >>"$BENCH_LOG"
    fio --name=background --filename="$2/$FIO_FILE" --rw=write --bs=1M --size="${FIO_MIB}M" \
        --direct=1 --ioengine=libaio --iodepth="$FIO_QD" --time_based --runtime=$((2 * FIO_RUNTIME + 6)) \
        --output-format=json --output=/dev/null >>"$BENCH_LOG" 2>&1 &
    pid=$!
    sleep 3
    for i in 1 2 3; do
        bench_run_us us fk snapshot create "$vol" --name "load$1-$i"
        record fio fukastor-load - "$1.$i" snapshot_us "$us"
        sleep 1
    done
    for i in 1 2 3; do
        bench_run_us us fk snapshot rm "$vol" "load$1-$i"
        record fio fukastor-load - "$1.$i" snapshot_rm_us "$us"
    done
    wait "$pid" || bench_die "fio in the background on $2 failed (see $BENCH_LOG)"
}

part_fio() {
    local dev_mib=$((FIO_MIB + 1024)) loopdev r us vol=bench-fio
    local lmp=$MNT/fio-loop fmp=$MNT/fio-fukastor
    mkdir -p "$WORK/loop"
    truncate -s "${dev_mib}M" "$WORK/loop/disk.img"
    loopdev=$(losetup --direct-io=on --sector-size 4096 -f --show "$WORK/loop/disk.img")
    losetup -l -O NAME,DIO,LOG-SEC,BACK-FILE "$loopdev" >>"$BENCH_LOG" 2>&1
    mkfs.ext4 "${MKFS_OPTS[@]}" "$loopdev" >>"$BENCH_LOG" 2>&1 || bench_die "mkfs.ext4 $loopdev failed"
    mount_ext4 "$loopdev" "$lmp"
    fill "$lmp/$FIO_FILE" "$FIO_MIB" fio loop - 0
    if ((WITH_FK)); then
        bench_run_us us fk volume create "$vol" --size "${dev_mib}M"
        bench_run_us us attach "$vol"
        losetup -l -O NAME,DIO,LOG-SEC,BACK-FILE "$ATTACHED" >>"$BENCH_LOG" 2>&1
        mkfs.ext4 "${MKFS_OPTS[@]}" "$ATTACHED" >>"$BENCH_LOG" 2>&1 || bench_die "mkfs.ext4 $ATTACHED failed"
        mount_ext4 "$ATTACHED" "$fmp"
        fill "$fmp/$FIO_FILE" "$FIO_MIB" fio fukastor - 0
    fi
    for ((r = 1; r <= FIO_RUNS; r++)); do
        bench_say "fio, before a snapshot, round $r/$FIO_RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        fio_tests loop "b$r" "$lmp"
        if ((WITH_FK)); then fio_tests fukastor-before "$r" "$fmp"; fi
    done
    for ((r = 1; r <= FIO_RUNS; r++)); do
        bench_say "fio, after a snapshot, round $r/$FIO_RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        fio_tests loop "a$r" "$lmp"
        if ((WITH_FK)); then
            bench_run_us us sync -f "$fmp"
            record fio fukastor-after - "$r" syncfs_us "$us"
            bench_run_us us fk snapshot create "$vol" --name "fio$r"
            record fio fukastor-after - "$r" snapshot_us "$us"
            fio_tests fukastor-after "$r" "$fmp"
            snapshot_under_load "$r" "$fmp"
        fi
    done
    umount "$lmp"
    losetup -d "$loopdev"
    if ((WITH_FK)); then
        fk --json volume ls >>"$BENCH_LOG" 2>&1 || true
        umount "$fmp"
        bench_run_us us fk volume detach "$vol"
        bench_run_us us fk volume rm "$vol"
    fi
}

# --- part 4: attaching a volume that holds data ---------------------------------------------

# server_gone: wait (at most 60 s) until no volume server of $STORE runs (its
# process, not server.json, which a stopping server removes before its last work).
server_gone() {
    local i
    for ((i = 0; i < 600; i++)); do
        pgrep -f -- "--store $STORE volume-serve" >/dev/null || return 0
        sleep 0.1
    done
    bench_die "a volume server of $STORE still runs 60 s after the last detach"
}

reopen_fukastor() {
    local n=$1 r vol=bench-reopen-${1}g us
    bench_run_us us fk volume create "$vol" --size "$((n + 1))G"
    bench_run_us us attach "$vol"
    fill "$ATTACHED" $((n * 1024)) reopen fukastor "$n" 0
    bench_run_us us fk volume detach "$vol"
    server_gone
    printf '\n# %s after its first detach: ' "$vol" >>"$BENCH_LOG"
    fk --json volume ls >>"$BENCH_LOG" 2>&1 || true
    ls -l "$STORE/fukastor/pool/layers" >>"$BENCH_LOG" 2>&1 || true
    for ((r = 1; r <= RUNS; r++)); do
        bench_say "reopen, $n GiB, fukastor, run $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        server_gone # every cold attach starts the server
        settle
        bench_run_us us attach "$vol"
        record reopen fukastor "$n" "$r" cold_us "$us"
        bench_run_us us fk volume detach "$vol"
        bench_run_us us attach "$vol"
        record reopen fukastor "$n" "$r" warm_us "$us"
        bench_run_us us fk volume detach "$vol"
    done
    server_gone
    bench_run_us us fk volume rm "$vol"
}

BOUND=
losetup_show() { BOUND=$(losetup --direct-io=on --sector-size 4096 -f --show "$1"); }

reopen_losetup() {
    local n=$1 r m f=$WORK/reopen.img us
    truncate -s "$((n + 1))G" "$f"
    fill "$f" $((n * 1024)) reopen losetup "$n" 0
    for ((r = 1; r <= RUNS; r++)); do
        bench_say "reopen, $n GiB, losetup, run $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
        for m in cold warm; do
            [[ $m == cold ]] && settle
            bench_run_us us losetup_show "$f"
            record reopen losetup "$n" "$r" "${m}_us" "$us"
            [[ -b $BOUND ]] || bench_die "losetup printed '$BOUND', not a loop device"
            losetup -d "$BOUND"
        done
    done
    rm -f "$f"
}

part_reopen() {
    local n
    for n in "${SIZE_LIST[@]}"; do
        if ((WITH_FK)); then reopen_fukastor "$n"; fi
        reopen_losetup "$n"
    done
}

# --- run ----------------------------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(bench_now_us)
bench_say "work directory $WORK ($(bench_fs_of "$WORK")), load $LOAD_START"
declare -A PART_US
for p in snapshot container fio reopen; do
    has_part "$p" || continue
    t0=$(bench_now_us)
    "part_$p"
    PART_US[$p]=$(($(bench_now_us) - t0))
done
T_END=$(bench_now_us)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------

# goal TEXT OK(1/0/"") DETAIL
goal() {
    local verdict
    case $2 in 1) verdict=MET ;; 0) verdict="NOT MET" ;; *) verdict="not measured" ;; esac
    printf '  %-12s %s (%s)\n' "$verdict" "$1" "$3"
}
# all_ok V...: 1 when every V is 1, 0 when one is 0, "" when none was measured
all_ok() {
    local v any=
    for v in "$@"; do
        [[ -n $v ]] || continue
        [[ $v == 1 ]] || { echo 0; return; }
        any=1
    done
    echo "$any"
}
join_by() { # join_by SEP WORD...
    local sep=$1 out=$2 w
    shift 2
    for w in "$@"; do out+=$sep$w; done
    echo "$out"
}
lt() { [[ -n $1 ]] && awk -v a="$1" -v b="$2" 'BEGIN { print (a < b) ? 1 : 0 }'; }
ratio() { # ratio A B: A / B as "0.93x", "-" when either is missing
    if [[ -n $1 && -n $2 && $2 != 0 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; else echo "-"; fi
}
ratio_ok() { # ratio_ok A B MIN: 1 when A / B >= MIN
    [[ -n $1 && -n $2 && $2 != 0 ]] || { echo; return; }
    awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { print (a / b >= m) ? 1 : 0 }'
}

report() {
    local n c m row t v lv bv av
    echo "# fukastor volume benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine:  $(bench_machine)"
    echo "data on:  $WORK ($(bench_fs_of "$WORK"))"
    echo "tools:    fukastor $GIT_REV$( ((WITH_FK)) || echo ' (not run: BENCH_FUKASTOR=0)'); $(fio --version); $(qemu-img --version | head -n1)"
    echo "load:     $LOAD_START at start, $LOAD_END at end (loadavg 1/5/15 min)"
    printf 'time:     whole run %s s' "$(bench_secs $((T_END - T_START)))"
    for p in snapshot container fio reopen; do
        [[ -z ${PART_US[$p]:-} ]] || printf '; %s %s s' "$p" "$(bench_secs "${PART_US[$p]}")"
    done
    echo
    echo

    if has_part snapshot; then
        echo "## Snapshot and rollback after N GiB written (median of $RUNS runs; sync + drop_caches before each)"
        echo
        echo "| | fukastor | cp -a (plain-dir upper) | qemu-img (qcow2 internal) |"
        echo "|---|--:|--:|--:|"
        for n in "${SIZE_LIST[@]}"; do
            for m in snapshot rollback; do
                printf '| %s after %s GiB |' "$m" "$n"
                for c in fukastor cp qemu; do printf ' %s |' "$(cell_ms "$(med snapshot "$c" "$n" "${m}_us")")"; done
                echo
            done
        done
        if ((WITH_FK)); then
            for n in "${SIZE_LIST[@]}"; do
                printf '| fukastor volume detach / attach, %s GiB | %s / %s | | |\n' "$n" \
                    "$(cell_ms "$(med snapshot fukastor "$n" detach_us)")" "$(cell_ms "$(med snapshot fukastor "$n" attach_us)")"
            done
            printf '| fukastor volume attach, empty volume | %s | | |\n' "$(cell_ms "$(med snapshot fukastor all attach_empty_us)")"
            printf '| fukastor --version (process start, the floor) | %s | | |\n' "$(cell_ms "$(med snapshot fukastor all floor_us)")"
            for n in "${SIZE_LIST[@]}"; do
                printf '| sync -f of the ext4 before the snapshot (untimed above), %s GiB | %s | | |\n' "$n" \
                    "$(cell_ms "$(med snapshot fukastor "$n" syncfs_us)")"
            done
            for n in "${SIZE_LIST[@]}"; do
                printf '| fill %s GiB (fio, MB/s): fukastor / plain-dir file | %s | %s | |\n' "$n" \
                    "$(med snapshot fukastor "$n" fill_MBps)" "$(med snapshot cp "$n" fill_MBps)"
            done
        fi
        echo
        echo "fukastor rollback: the rollback command alone (it is refused while attached: umount + detach"
        echo "before it and attach + mount after it are not in that row). Writes before each fukastor and"
        echo "qemu-img snapshot: N GiB; before each rollback: N GiB more (the head the rollback discards)."
        echo "cp -a: snapshot = cp -a + sync -f; rollback = rm -rf upper + cp -a back + sync -f."
        echo
    fi

    if has_part reopen; then
        echo "## Attaching a volume that holds data (written without a snapshot; median of $RUNS runs)"
        echo
        echo "| | fukastor \`volume attach\` | plain loop: \`losetup\` |"
        echo "|---|--:|--:|"
        for n in "${SIZE_LIST[@]}"; do
            for m in cold warm; do
                printf '| attach after %s GiB written, %s |' "$n" "$m"
                for c in fukastor losetup; do printf ' %s |' "$(cell_ms "$(med reopen "$c" "$n" "${m}_us")")"; done
                echo
            done
        done
        echo
        echo "cold: no volume server running, after sync and drop_caches; warm: right after a cold"
        echo "attach and detach. A volume's head is replayed when it opens, a sealed layer read through"
        echo "its index file."
        echo
    fi

    if has_part container; then
        echo "## Containers: $NCTR created and mounted in a row, then unmounted and removed (image: bookworm minbase)"
        echo
        echo "| | fukastor | overlay on a directory | loop file + mkfs.ext4 |"
        echo "|---|--:|--:|--:|"
        for row in "up median" "up worst" "up first" "down median" "down worst"; do
            read -r m t <<<"$row"
            case $m in up) printf '| create + mount, %s |' "$t" ;; down) printf '| umount + rm, %s |' "$t" ;; esac
            for c in fukastor dir mkfs; do
                case $t in
                median) v=$(med container "$c" - "${m}_us") ;;
                worst) v=$(worst container "$c" - "${m}_us") ;;
                first) v=$(first container "$c" - "${m}_us") ;;
                esac
                printf ' %s |' "$(cell_ms "$v")"
            done
            echo
        done
        if ((WITH_FK)); then
            for m in create mount umount rm; do
                printf '| fukastor %s alone, median (worst) | %s (%s) | | |\n' "$m" \
                    "$(cell_ms "$(med container fukastor - "${m}_us")")" "$(cell_ms "$(worst container fukastor - "${m}_us")")"
            done
        fi
        echo
        echo "Peers: the image mounted with \`fukastor mount --kernel\` per container and an overlay on it;"
        echo "upper/work in a directory, or on a fresh ext4 (mkfs.ext4 defaults) on a sparse loop file of"
        v=$(first container mkfs - volume_bytes)
        [[ $v =~ ^[0-9]+$ ]] && v="$(bench_mib "$v") MiB"
        echo "$v (the size of fukastor's container volumes; 10G when fukastor was not run)."
        echo
    fi

    if has_part fio; then
        echo "## Block I/O: ext4 on a fukastor volume vs ext4 on a plain loop file (median of $FIO_RUNS rounds per phase)"
        echo
        echo "fio --direct=1 --ioengine=libaio --iodepth=$FIO_QD, ${FIO_RUNTIME} s each (+1 s ramp), on a $FIO_MIB MiB file;"
        echo "plain loop: losetup --direct-io=on --sector-size 4096 on a file on the same disk (median of all $((2 * FIO_RUNS)) rounds)."
        echo
        echo "fukastor's volume server reads and writes its layer files through the host page cache (it"
        echo "fdatasyncs on flush); the plain loop's direct I/O does not use it."
        echo
        echo "| | plain loop | fukastor, before snapshot | ratio | fukastor, after snapshot | ratio |"
        echo "|---|--:|--:|--:|--:|--:|"
        for t in "${FIO_TESTS[@]}"; do
            case $t in
            seq*) m=MBps; printf '| %s 1 MiB (MB/s) |' "${t/seq/seq }" ;;
            randwritesync) m=iops; printf '| random write 4 KiB + fdatasync every %s (IOPS) |' "$FIO_SYNC_EVERY" ;;
            *) m=iops; printf '| %s 4 KiB (IOPS) |' "${t/rand/random }" ;;
            esac
            lv=$(med fio loop - "${t}_$m")
            bv=$(med fio fukastor-before - "${t}_$m")
            av=$(med fio fukastor-after - "${t}_$m")
            printf ' %s | %s | %s | %s | %s |\n' "${lv:--}" "${bv:--}" "$(ratio "$bv" "$lv")" "${av:--}" "$(ratio "$av" "$lv")"
        done
        if ((WITH_FK)); then
            printf '| fill %s MiB sequentially before the rounds (MB/s) | %s | %s | | | |\n' "$FIO_MIB" \
                "$(med fio loop - fill_MBps)" "$(med fio fukastor - fill_MBps)"
            printf '| before each after round: sync -f, then snapshot create (median) | | | | %s, %s | |\n' \
                "$(cell_ms "$(med fio fukastor-after - syncfs_us)")" "$(cell_ms "$(med fio fukastor-after - snapshot_us)")"
            printf '| while a seq write 1 MiB runs: snapshot create, snapshot rm (median / worst) | | | | %s / %s, %s / %s | |\n' \
                "$(cell_ms "$(med fio fukastor-load - snapshot_us)")" "$(cell_ms "$(worst fio fukastor-load - snapshot_us)")" \
                "$(cell_ms "$(med fio fukastor-load - snapshot_rm_us)")" "$(cell_ms "$(worst fio fukastor-load - snapshot_rm_us)")"
        fi
        echo
    fi

    echo "## Goals"
    local -a oks=() det=()
    local lo hi
    if has_part snapshot && ((WITH_FK)); then
        for m in snapshot rollback; do
            oks=() det=()
            for n in "${SIZE_LIST[@]}"; do
                v=$(med snapshot fukastor "$n" "${m}_us")
                oks+=("$(lt "$v" 10000)")
                det+=("$n GiB $(cell_ms "$v") (worst $(cell_ms "$(worst snapshot fukastor "$n" "${m}_us")"))")
            done
            goal "$m < 10 ms at every size" "$(all_ok "${oks[@]}")" "$(join_by ', ' "${det[@]}")"
            lo=$(med snapshot fukastor "${SIZE_LIST[0]}" "${m}_us")
            hi=$(med snapshot fukastor "${SIZE_LIST[-1]}" "${m}_us")
            if ((${#SIZE_LIST[@]} > 1)) && [[ -n $lo && -n $hi ]]; then
                v=$(awk -v a="$lo" -v b="$hi" 'BEGIN { print (b <= a * 1.5 || b - a < 1000) ? 1 : 0 }')
            else
                v=
            fi
            goal "$m flat ${SIZE_LIST[0]} -> ${SIZE_LIST[-1]} GiB" "$v" \
                "$(ratio "$hi" "$lo") ($(cell_ms "$hi") vs $(cell_ms "$lo")); flat = at most 1.5x or less than 1 ms more"
        done
    else
        goal "snapshot/rollback < 10 ms and flat" "" "snapshot part or fukastor not run"
    fi
    if has_part container && ((WITH_FK)); then
        v=$(med container fukastor - up_us)
        goal "container create (create + mount) < 100 ms" "$(lt "$v" 100000)" \
            "median $(cell_ms "$v"), worst $(cell_ms "$(worst container fukastor - up_us)")"
    else
        goal "container create < 100 ms" "" "container part or fukastor not run"
    fi
    if has_part fio && ((WITH_FK)); then
        oks=() det=()
        for t in seqread seqwrite; do
            for c in before after; do
                lv=$(med fio loop - "${t}_MBps")
                v=$(med fio "fukastor-$c" - "${t}_MBps")
                oks+=("$(ratio_ok "$v" "$lv" 0.70)")
                det+=("${t/seq/} $c $(ratio "$v" "$lv")")
            done
        done
        goal "sequential >= 70% of the plain loop" "$(all_ok "${oks[@]}")" "$(join_by ', ' "${det[@]}")"
        oks=() det=()
        for c in before after; do
            lv=$(med fio loop - randwrite_iops)
            v=$(med fio "fukastor-$c" - randwrite_iops)
            oks+=("$(ratio_ok "$v" "$lv" 0.50)")
            det+=("$c $(ratio "$v" "$lv")")
        done
        for c in before after; do
            det+=("with fdatasync every $FIO_SYNC_EVERY: $c $(ratio "$(med fio "fukastor-$c" - randwritesync_iops)" "$(med fio loop - randwritesync_iops)")")
        done
        goal "4 KiB random writes >= 50% of the plain loop" "$(all_ok "${oks[@]}")" "$(join_by ', ' "${det[@]}")"
    else
        goal "sequential >= 70%, 4 KiB random writes >= 50% of the plain loop" "" "fio part or fukastor not run"
    fi
    if ((${#NOTES[@]})); then
        echo
        echo "## Notes"
        printf -- '- %s\n' "${NOTES[@]}"
    fi
}

report | tee "$BENCH_DIR/report.txt"
bench_say "done in $(bench_secs $((T_END - T_START))) s; report in $BENCH_DIR/report.txt, figures in $RESULTS, log in $BENCH_LOG"
