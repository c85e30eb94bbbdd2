#!/usr/bin/env bash
#
# bench-snapshot.sh: the snapshot/rollback part of bench-volume.sh, quick and
# on its own (root; SIZE GiB + 1 GiB free). Per run, on a fresh volume: write
# SIZE GiB into a file on ext4 on the attached volume (fio, 1 MiB direct
# writes), `sync -f`, drop_caches, then TIMED `fukastor snapshot create`;
# write 256 MiB more, umount, detach, drop_caches, TIMED `snapshot rollback`
# (the server still up: it idles 2 s after the detach); attach, check the
# marker written before the snapshot, write 256 MiB more, umount, detach,
# sleep 3 s (the server exits), drop_caches, TIMED `snapshot rollback` again
# (no server: the command runs it in its own process, and starts a server
# to free the 256 MiB head); check the marker again; remove the volume.
# Prints the medians, and `fukastor --version` (the floor of any command).
# Usage: integration/bench-snapshot.sh BIN SIZE_GIB RUNS [TAG]
#   (store in $BENCH_STORE, default /var/tmp/fukastor-bench-snapshot)
set -euo pipefail
BIN=$1; N=$2; R=$3; TAG=${4:-}
STORE=${BENCH_STORE:-/var/tmp/fukastor-bench-snapshot}
MP=$STORE.mnt
mkdir -p "$STORE" "$MP"
fk() { "$BIN" --store "$STORE" "$@"; }
us() { local t0=${EPOCHREALTIME/./}; "$@" >/dev/null; local t1=${EPOCHREALTIME/./}; echo $((t1 - t0)); }
settle() { sync; echo 3 >/proc/sys/vm/drop_caches; "$BIN" --version >/dev/null; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
detach() { local i; for ((i = 0; i < 50; i++)); do fk volume detach "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; fk volume detach "$1"; }
alive() { local p; p=$(jq -r .pid "$STORE/fukastor/vserve/server.json" 2>/dev/null) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
# Attaches volume $1, mounts it and checks the marker of run $2.
check() {
    local dev got
    dev=$(fk volume attach "$1" | tail -n1)
    mount -t ext4 "$dev" "$MP"
    got=$(dd if="$MP/data" bs=4096 count=1 iflag=direct status=none | tr -d '\0' | head -n1)
    [[ $got == s$2 ]] || echo "MISMATCH run $2: $got" >&2
}
snaps=() rbs=() rbl=() vers=()
for ((r = 1; r <= R; r++)); do
    v=hs$r
    fk volume create $v --size $((N + 1))G >/dev/null
    dev=$(fk volume attach $v | tail -n1)
    mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dev"
    mount -t ext4 "$dev" "$MP"
    fio --name=fill --filename="$MP/data" --rw=write --bs=1M --size=${N}G --direct=1 \
        --ioengine=libaio --iodepth=4 --refill_buffers --end_fsync=1 --output=/dev/null
    printf 's%s\n' $r | dd of="$MP/data" bs=4096 count=1 conv=notrunc,sync oflag=direct status=none
    sync -f "$MP"
    settle
    vers+=("$(us "$BIN" --version)")
    snaps+=("$(us fk snapshot create $v --name s$r)")
    fio --name=dirty --filename="$MP/data" --rw=write --bs=1M --size=256M --direct=1 \
        --ioengine=libaio --iodepth=4 --refill_buffers --end_fsync=1 --output=/dev/null
    umount "$MP"
    detach $v
    settle
    a=server; alive || a=local
    rbs+=("$(us fk snapshot rollback $v s$r)")
    check $v $r
    fio --name=dirty2 --filename="$MP/data" --rw=write --bs=1M --size=256M --direct=1 \
        --ioengine=libaio --iodepth=4 --refill_buffers --end_fsync=1 --output=/dev/null
    umount "$MP"
    detach $v
    sleep 3
    settle
    b=server; alive || b=local
    rbl+=("$(us fk snapshot rollback $v s$r)")
    echo "run $r: snapshot ${snaps[-1]} us, rollback ${rbs[-1]} us ($a), ${rbl[-1]} us ($b), --version ${vers[-1]} us" >&2
    check $v $r
    umount "$MP"
    detach $v
    fk volume rm $v >/dev/null
done
echo "$TAG ${N}GiB runs=$R: snapshot median $(median "${snaps[@]}") ms [$(printf '%s ' "${snaps[@]}")]; rollback(server up) $(median "${rbs[@]}") ms; rollback(no server) $(median "${rbl[@]}") ms; --version $(median "${vers[@]}") ms"
