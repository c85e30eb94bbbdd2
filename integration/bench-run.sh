#!/usr/bin/env bash
#
# bench-run.sh: how long it takes to run `true` in a fresh container with
# fukastor, next to podman and to crun on a ready-made root directory (the
# floor), and how much disk 20 stopped containers take with fukastor and with
# podman. Run by hand as root (not part of the test suite); about 3 minutes
# with the defaults once the fixtures are built.
#
# The image: a tag of integration/fixtures.sh's OCI layout (`bookworm` by
# default: debootstrap --variant=minbase, ~5k files, 200 MB), imported once
# into each tool's own storage:
#   fukastor  fukastor --store $WORK/store pull oci:LAYOUT:TAG TAG
#   podman    skopeo copy oci:LAYOUT:TAG containers-storage:localhost/bench/TAG
#             into a private store (CONTAINERS_STORAGE_CONF: overlay driver,
#             graphroot $WORK/podman/root) with a private containers.conf
#             (CONTAINERS_CONF: only default_ulimits, computed as plugin/install.sh
#             does, since podman's default rlimits exceed this kind of host's
#             hard limits): the host's podman configuration and images are
#             untouched.
#   floor     umoci unpack --image LAYOUT:TAG $WORK/floor (a plain directory)
#
# Part "run": $RUNS rounds; each round runs every column once, in this order
# (interleaved, so a slow phase of the shared machine hits all columns alike),
# and times the whole command (wall clock, bash EPOCHREALTIME):
#   fukastor-cold  fukastor run --rm --name bench-run TAG -- true, after waiting
#                  for the volume server to exit (it stops 2 s after the last
#                  volume is detached): what a lone run pays, server start included
#   floor          crun run --bundle $WORK/floor-bundle fukastor-bench-floor: the
#                  config.json fukastor itself wrote for TAG (same namespaces,
#                  mounts, capabilities, `true`), with root.path = the unpacked
#                  directory: the runtime alone, no root filesystem to assemble
#   floor-warm     the floor, started right after a write (untimed, after the
#                  pause) of a subshell's own ID into its own cgroup.threads:
#                  the cgroup lock's grace period is over and its fast path
#                  open when crun starts (what fukastor's run arranges with a
#                  thread, src/runtime/cgroup.rs), the best case for crun alone.
#   fukastor       fukastor run --rm ... TAG -- true right after another run (the
#                  volume server is up): create (thin clone of a pre-formatted
#                  ext4), mount (composefs image + loop device + ext4 + overlay),
#                  config.json, crun run, umount, rm
#   podman-nonet   podman run --rm --network none localhost/bench/TAG true
#                  (fukastor's containers have a private network namespace with
#                  loopback only: this is the like-for-like podman)
#   podman         podman run --rm localhost/bench/TAG true (podman's default
#                  network: netavark bridge)
#   One untimed warm-up of each column first (fukastor's also builds its ext4
#   template, once per store). Figures: median and worst of the $RUNS runs.
#   Every timed command starts after a pause ($PAUSE s, --pause): crun's own
#   time depends on how long ago the previous container started. On this
#   kind of host (cgroup v1) crun's write to cgroup.procs waits for an RCU
#   grace period (percpu_down_write on the cgroup threadgroup rwsem), ~12 ms
#   here, unless another container started within the last grace period:
#   crun on the same directory took ~15 ms back to back and ~27 ms 50 ms
#   after the previous run (docs/benchmarks.md, *Running containers*). With
#   no pause the floor, run right after another column's crun, gets the
#   fast path while fukastor's own crun, ~15 ms of work after the last one,
#   does not. --pause 0 gives the back-to-back figures. fukastor's `run`
#   starts that grace period itself when it starts, on a thread of its own, so
#   it passes while the root filesystem is assembled; floor-warm gives crun
#   alone the whole of it ahead of the timed span.
#
# Part "phases" (--phases N; off by default): where the time of a run goes,
#   from the kernel's own records of process starts and exits (tracefs events
#   sched_process_fork/exec/exit in a private instance, plus a marker before
#   each run). N pairs of: floor, fukastor (same pause as part "run"). For each
#   run: before crun (the marker to crun's exec: for fukastor its start,
#   create, mount and bundle; for the floor bash's fork and exec), crun (its
#   exec to its exit, the runtime's own time on each root filesystem), after
#   crun (crun's exit to the exit of fukastor's last thread: unmount and
#   removal), exit (from there to the SIGCHLD the harness is sent: the
#   kernel tearing the process down, its memory unmapped and its files
#   closed; event signal_generate). Only the harness's own children and their
#   descendants count. The harness's wakeup is in no phase (the totals of
#   part "run" hold it). Medians. Needs tracefs (/sys/kernel/tracing).
#
# Part "cpu" (--cpu N; off by default): how busy the machine is during runs.
#   Blocks of N back-to-back runs (no pause) of one kind, in the order floor,
#   fukastor, floor, fukastor; for each block the wall time per run and the
#   CPU time the whole machine spent per run (all processes and kernel
#   threads: the busy fields of /proc/stat, user to steal, in clock ticks, so
#   take N >= 40 for a tick's error to stay under 0.25 ms). Busy / wall is how
#   many CPUs were in use on average: near 1, the runs are one chain of work
#   that waits for nothing, and only less work makes them faster.
#
# Part "disk": $CONTAINERS stopped containers of TAG, two ways:
#   created  fukastor create TAG --name cI          podman create --name cI IMG true
#   ran      fukastor run --name rI TAG -- true     podman run --name rI --network none IMG true
#            (no --rm: they stay, stopped)
#   fukastor: growth of the volume pool's layer files (du -sB1 of
#   $WORK/store/fukastor/pool/layers) plus the containers' records and bundles
#   (fukastor/containers); podman: growth of its graphroot (du -sB1 of
#   $WORK/podman/root: container layers, userdata, its database). Both measured
#   after a `sync`; the image itself is in neither figure. fukastor's ext4
#   template (built once per store and size, shared by every container) is
#   shown apart.
#
# Goals (from the issue): fukastor run --rm within 1.5x of the crun floor, and
# at most half of podman's time (checked against podman-nonet, the faster and
# like-for-like podman column), both on medians.
#
# Usage: integration/bench-run.sh [--runs N] [--containers N] [--image TAG]
#                                 [--kinds "COLUMN..."] [--pause S] [--phases N] [--cpu N]
#                                 [--no-install] [--keep]
#   --runs        rounds of part "run" (default 20)
#   --containers  containers of part "disk" (default 20; 0 skips it)
#   --image       fixture tag (default bookworm)
#   --kinds       columns of part "run" (default: all six above)
#   --pause       seconds of idle before each timed run of part "run" (default 0.1)
#   --phases      pairs of part "phases" (default 0: skipped)
#   --cpu         runs per block of part "cpu" (default 0: skipped)
#   --no-install  install nothing, build nothing
#   --keep        keep $WORK's stores after the run
# Environment:
#   FUKASTOR_FIXTURES         fixtures directory (default /var/tmp/fukastor-fixtures)
#   FUKASTOR_BENCH_RUN_DIR    work directory (default /var/tmp/fukastor-bench-run)
#   FUKASTOR_BIN              fukastor binary (default: cargo build --release)
# Output: the tables on stdout; raw figures in $WORK/results.tsv, every
# command's output in $WORK/bench.log.

# SC2016: backquotes in the table's printf formats are markdown.
# SC2154: bench_run_us sets the variable named by its first argument.
# shellcheck disable=SC2016,SC2154
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
export BENCH_NAME=bench-run
# shellcheck source-path=SCRIPTDIR source=lib/bench-common.sh
source "$HERE/lib/bench-common.sh"

FIX=${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}
FIX=${FIX%/}
LAYOUT=$FIX/oci
WORK=${FUKASTOR_BENCH_RUN_DIR:-/var/tmp/fukastor-bench-run}
WORK=${WORK%/}
RUNS=20
CONTAINERS=20
IMAGE=bookworm
KINDS="fukastor-cold floor floor-warm fukastor podman-nonet podman"
INSTALL=1
KEEP=0
PAUSE=0.1
PHASES=0
CPU_RUNS=0

while (($#)); do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --containers) CONTAINERS=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --kinds) KINDS=$2; shift 2 ;;
    --pause) PAUSE=$2; shift 2 ;;
    --phases) PHASES=$2; shift 2 ;;
    --cpu) CPU_RUNS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '3,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || bench_die "--runs wants a positive number"
[[ $CONTAINERS =~ ^[0-9]+$ ]] || bench_die "--containers wants a number"
[[ $PAUSE =~ ^[0-9]+(\.[0-9]+)?$ ]] || bench_die "--pause wants a number of seconds"
[[ $PHASES =~ ^[0-9]+$ ]] || bench_die "--phases wants a number"
[[ $CPU_RUNS =~ ^[0-9]+$ ]] || bench_die "--cpu wants a number"
TRACEFS=/sys/kernel/tracing
if ((PHASES > 0)) && [[ ! -e $TRACEFS/instances ]]; then
    bench_die "--phases needs tracefs at $TRACEFS (mount -t tracefs nodev $TRACEFS)"
fi
if ((PHASES > 0)) && ! grep -q group_dead "$TRACEFS/events/sched/sched_process_exit/format" 2>/dev/null; then
    bench_die "--phases needs the group_dead field of sched_process_exit (a newer kernel)"
fi
for k in $KINDS; do
    [[ $k == @(fukastor-cold|floor|floor-warm|fukastor|podman-nonet|podman) ]] || bench_die "unknown column $k"
done
read -r -a RUN_KINDS <<<"$KINDS"
[[ $EUID -eq 0 ]] || bench_die "must run as root (containers, mounts, loop devices)"

mkdir -p "$WORK"
BENCH_LOG=$WORK/bench.log
: >"$BENCH_LOG"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
T_START=$(bench_now_us)

STORE=$WORK/store
PODMAN_DIR=$WORK/podman
FLOOR=$WORK/floor
FLOOR_BUNDLE=$WORK/floor-bundle
FLOOR_ID=fukastor-bench-floor
PODMAN_IMAGE=localhost/bench/$IMAGE:latest

# --- tools ------------------------------------------------------------------------

if ((INSTALL)); then
    bench_apt_install crun podman skopeo umoci jq util-linux e2fsprogs
    if [[ -z ${FUKASTOR_BIN:-} ]]; then
        bench_say "cargo build --release (fukastor)"
        (cd "$REPO" && cargo build --release --quiet) >>"$BENCH_LOG" 2>&1 ||
            bench_die "cargo build --release failed (see $BENCH_LOG)"
    fi
    if [[ ! -f $FIX/STAMP ]]; then
        bench_say "building the fixtures (integration/fixtures.sh)"
        "$HERE/fixtures.sh" >>"$BENCH_LOG" 2>&1 || bench_die "integration/fixtures.sh failed (see $BENCH_LOG)"
    fi
fi
FK=${FUKASTOR_BIN:-$REPO/target/release/fukastor}
[[ -x $FK ]] || bench_die "no fukastor binary at $FK (build it, or set FUKASTOR_BIN)"
for t in crun podman skopeo umoci jq losetup; do
    command -v "$t" >/dev/null || bench_die "$t is not installed (run without --no-install)"
done
[[ -f $LAYOUT/index.json ]] || bench_die "no fixtures in $FIX: run integration/fixtures.sh"
[[ -n $(oci_manifest_of "$LAYOUT" "$IMAGE") ]] || bench_die "no tag $IMAGE in $LAYOUT"

F() { "$FK" --store "$STORE" "$@"; }
P() { env CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf" CONTAINERS_CONF="$PODMAN_DIR/containers.conf" podman "$@"; }

# --- clean-up ---------------------------------------------------------------------

server_pid() { jq -r '.pid // empty' "$STORE/fukastor/vserve/server.json" 2>/dev/null || true; }

# Waits (up to 15 s) for the volume server to exit and its mount to go.
wait_server_gone() {
    local i pid
    for ((i = 0; i < 150; i++)); do
        pid=$(server_pid)
        if [[ -z $pid || ! -d /proc/$pid ]] && [[ -z $(bench_mounts_under "$STORE") ]]; then
            return 0
        fi
        sleep 0.1
    done
    bench_say "the volume server of $STORE still runs after 15 s"
    return 1
}

cleanup_all() {
    local n m dev
    crun delete --force "$FLOOR_ID" >/dev/null 2>&1 || true
    if [[ -x $FK && -d $STORE ]]; then
        for n in $(F --json ps 2>/dev/null | jq -r '.[].name' 2>/dev/null); do
            crun delete --force "fukastor-$n" >/dev/null 2>&1 || true
            F rm --force "$n" >>"$BENCH_LOG" 2>&1 || true
        done
        wait_server_gone || true
    fi
    if [[ -f $PODMAN_DIR/storage.conf ]]; then
        P rm -a -f >>"$BENCH_LOG" 2>&1 || true
    fi
    while read -r m _; do
        if [[ -n $m ]]; then umount -l "$m" 2>/dev/null || true; fi
    done < <(bench_mounts_under "$WORK")
    for dev in $(bench_loops_under "$WORK"); do losetup -d "$dev" 2>/dev/null || true; done
}

# Part "phases"'s trace instance (a leftover one only holds a buffer).
PHASE_TRACE=
phases_stop() {
    [[ -n $PHASE_TRACE && -d $PHASE_TRACE ]] || return 0
    echo 0 >"$PHASE_TRACE/tracing_on" 2>/dev/null || true
    rmdir "$PHASE_TRACE" 2>/dev/null || true
}

on_exit() {
    local rc=$?
    phases_stop
    cleanup_all
    if ((KEEP)); then
        bench_say "kept the stores in $WORK"
    else
        rm -rf --one-file-system "$STORE" "$PODMAN_DIR" "$FLOOR" "$FLOOR_BUNDLE"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

cleanup_all
rm -rf --one-file-system "$STORE" "$PODMAN_DIR" "$FLOOR" "$FLOOR_BUNDLE"

# --- setup ------------------------------------------------------------------------

# The rlimits podman can give containers here (as plugin/install.sh computes
# them): podman's defaults are 1048576 files and 4194304 processes, and podman
# lowers its own RLIMIT_NPROC to kernel.pid_max.
podman_ulimits() {
    local nofile nproc pid_max
    nofile=$(ulimit -Hn) nproc=$(ulimit -Hu) pid_max=$(cat /proc/sys/kernel/pid_max)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited ]] && nproc=4194304
    ((nofile > 1048576)) && nofile=1048576
    ((nproc > pid_max)) && nproc=$pid_max
    ((nproc > 4194304)) && nproc=4194304
    echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
}

bench_say "importing $IMAGE into fukastor, podman's storage and a plain directory"
bench_run_us t_pull F -q pull "oci:$LAYOUT:$IMAGE" "$IMAGE"
# The warm-up run also builds the ext4 template; its config.json is the floor's.
bench_run_us t_first F run --name bench-ref "$IMAGE" -- true
bench_run_us t_unpack umoci unpack --image "$LAYOUT:$IMAGE" "$FLOOR"
mkdir -p "$FLOOR_BUNDLE"
jq --arg root "$FLOOR/rootfs" '.root = {path: $root, readonly: false}' \
    "$STORE/fukastor/containers/bench-ref/bundle/config.json" >"$FLOOR_BUNDLE/config.json"
F rm bench-ref >>"$BENCH_LOG" 2>&1

mkdir -p "$PODMAN_DIR"
cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/root"
runroot = "$PODMAN_DIR/run"
EOF
printf '[containers]\n%s\n' "$(podman_ulimits)" >"$PODMAN_DIR/containers.conf"
bench_run_us t_skopeo env CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf" \
    skopeo --insecure-policy copy -q "oci:$LAYOUT:$IMAGE" "containers-storage:$PODMAN_IMAGE"
P run --rm --network none "$PODMAN_IMAGE" true >>"$BENCH_LOG" 2>&1 ||
    bench_die "podman cannot run a container here (see $BENCH_LOG; integration/lib/host-fixes.sh lists what this kind of host needs)"
printf 'setup\tfukastor-pull\t%s\nsetup\tfukastor-first-run\t%s\nsetup\tumoci-unpack\t%s\nsetup\tskopeo-copy\t%s\n' \
    "$t_pull" "$t_first" "$t_unpack" "$t_skopeo" >>"$RESULTS"

# --- part "run" -------------------------------------------------------------------

# This shell's cgroup.threads in the unified hierarchy (any hierarchy's write
# takes the kernel's one cgroup attach lock).
CG_THREADS=
while IFS=: read -r _ ctl path; do
    [[ -z $ctl ]] || continue
    for d in /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [[ -f $d$path/cgroup.threads ]]; then CG_THREADS=$d${path%/}/cgroup.threads; break 2; fi
    done
done </proc/self/cgroup
if [[ " $KINDS " == *" floor-warm "* && -z $CG_THREADS ]]; then
    bench_die "no cgroup v2 cgroup.threads for this shell (needed by column floor-warm)"
fi


run_one() {
    local kind=$1 __out=$2
    if [[ $kind == fukastor-cold ]]; then
        wait_server_gone || bench_die "the volume server did not stop"
    fi
    sleep "$PAUSE"
    case $kind in
    fukastor-cold)
        bench_run_us "$__out" F run --rm --name bench-run "$IMAGE" -- true
        ;;
    fukastor) bench_run_us "$__out" F run --rm --name bench-run "$IMAGE" -- true ;;
    floor) bench_run_us "$__out" crun run --bundle "$FLOOR_BUNDLE" "$FLOOR_ID" ;;
    floor-warm)
        (echo "$BASHPID" >"$CG_THREADS") || bench_die "cannot write to $CG_THREADS"
        bench_run_us "$__out" crun run --bundle "$FLOOR_BUNDLE" "$FLOOR_ID"
        ;;
    podman-nonet) bench_run_us "$__out" P run --rm --network none "$PODMAN_IMAGE" true ;;
    podman) bench_run_us "$__out" P run --rm "$PODMAN_IMAGE" true ;;
    esac
}

declare -A SAMPLES=()
bench_say "part run: warm-up"
for k in "${RUN_KINDS[@]}"; do run_one "$k" t; done
bench_say "part run: $RUNS rounds of: ${RUN_KINDS[*]} (a ${PAUSE} s pause before each)"
for ((r = 1; r <= RUNS; r++)); do
    for k in "${RUN_KINDS[@]}"; do
        run_one "$k" t
        SAMPLES[$k]+="$t "
        printf 'run\t%s\t%d\t%s\n' "$k" "$r" "$t" >>"$RESULTS"
    done
done

# --- part "phases" ----------------------------------------------------------------

# phases_parse < TRACE: one line per run, "KIND before crun after exit" (µs).
phases_parse() {
    awk -v fkbin="$FK" '
    function ts(   i) { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+:$/) return substr($i, 1, length($i) - 1) * 1e6; return -1 }
    function val(key,   i) { for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2); return "" }
    # The exec event`s file name, spaces included.
    function filename(   a, b) { a = index($0, " filename="); b = index($0, " pid="); return (a && b > a) ? substr($0, a + 10, b - a - 10) : "" }
    # The pid of the task that wrote the line (COMM-PID [CPU]).
    function writer() { return match($0, /-[0-9]+ +\[[0-9]+\]/) ? substr($0, RSTART + 1, RLENGTH) + 0 : -1 }
    function flush() {
        if (kind != "" && tc > 0 && te > 0 && (kind == "floor" || tf > 0) && tx > 0)
            printf "%s %d %d %d %d\n", kind, tc - t0, te - tc, (kind == "floor" ? 0 : tf - te), tx - (kind == "floor" ? te : tf)
        kind = ""
    }
    / tracing_mark_write: fkbench / {
        flush(); kind = $NF; t0 = ts(); hp = writer(); fk = ""; crun = ""; tc = 0; te = 0; tf = 0; tx = 0
        delete ours; delete kids; next
    }
    kind == "" { next }
    # Children of the harness; every task of fukastor (its threads, and
    # children until they exec another program).
    / sched_process_fork: / {
        if (val("pid") + 0 == hp) kids[val("child_pid")] = 1
        if (val("pid") in ours) ours[val("child_pid")] = 1
        next
    }
    / sched_process_exec: / {
        f = filename(); p = val("pid")
        if (kind == "fukastor" && fk == "" && f == fkbin && (p in kids)) { fk = p; ours[p] = 1 }
        else if (crun == "" && f ~ /crun$/ && ((kind == "floor" && (p in kids)) || (kind == "fukastor" && (p in ours) && p != fk))) { crun = p; tc = ts(); delete ours[p] }
        else if ((p in ours) && p != fk) delete ours[p]
        next
    }
    / sched_process_exit: / {
        p = val("pid")
        if (p == crun && te == 0) te = ts()
        else if ((p in ours) && val("group_dead") == "true" && te > 0) tf = ts()
        next
    }
    # The run`s process (crun for the floor, fukastor) is gone: its parent,
    # the harness, is sent SIGCHLD.
    / signal_generate: / {
        if (tx == 0 && te > 0 && (kind == "floor" || tf > 0) && val("sig") == 17 && val("pid") + 0 == hp) tx = ts()
        next
    }
    END { flush() }'
}

if ((PHASES > 0)); then
    PHASE_TRACE=$TRACEFS/instances/fukastor-bench-run-$$
    mkdir "$PHASE_TRACE" || bench_die "cannot make the trace instance $PHASE_TRACE"
    echo 4096 >"$PHASE_TRACE/buffer_size_kb"
    for e in sched/sched_process_fork sched/sched_process_exec sched/sched_process_exit signal/signal_generate; do
        echo 1 >"$PHASE_TRACE/events/$e/enable"
    done
    echo 'sig == 17' >"$PHASE_TRACE/events/signal/signal_generate/filter"
    bench_say "part phases: $PHASES pairs of: floor fukastor (a ${PAUSE} s pause before each)"
    echo 1 >"$PHASE_TRACE/tracing_on"
    for ((r = 1; r <= PHASES; r++)); do
        sleep "$PAUSE"
        echo "fkbench floor" >"$PHASE_TRACE/trace_marker"
        crun run --bundle "$FLOOR_BUNDLE" "$FLOOR_ID" >>"$BENCH_LOG" 2>&1 || bench_die "crun run failed (see $BENCH_LOG)"
        sleep "$PAUSE"
        echo "fkbench fukastor" >"$PHASE_TRACE/trace_marker"
        F run --rm --name bench-run "$IMAGE" -- true >>"$BENCH_LOG" 2>&1 || bench_die "fukastor run failed (see $BENCH_LOG)"
    done
    echo 0 >"$PHASE_TRACE/tracing_on"
    phases_parse <"$PHASE_TRACE/trace" >"$WORK/phases.tsv"
    phases_stop
    while read -r k b c a x; do printf 'phase\t%s\t%s\t%s\t%s\t%s\n' "$k" "$b" "$c" "$a" "$x" >>"$RESULTS"; done <"$WORK/phases.tsv"
    for k in floor fukastor; do
        n=$(awk -v k="$k" '$1 == k' "$WORK/phases.tsv" | wc -l)
        ((n * 2 > PHASES)) || bench_die "part phases: only $n of $PHASES $k runs found in the trace (lost events? see $WORK/phases.tsv)"
    done
fi

# --- part "cpu" -------------------------------------------------------------------

# busy_ticks: clock ticks all CPUs have spent busy since boot (/proc/stat).
busy_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

declare -a CPU_ROWS=()
if ((CPU_RUNS > 0)); then
    bench_say "part cpu: blocks of $CPU_RUNS back-to-back runs: floor fukastor floor fukastor"
    HZ=$(getconf CLK_TCK)
    for k in floor fukastor floor fukastor; do
        b0=$(busy_ticks)
        t0=$(date +%s%N)
        for ((r = 1; r <= CPU_RUNS; r++)); do
            if [[ $k == floor ]]; then
                crun run --bundle "$FLOOR_BUNDLE" "$FLOOR_ID" >>"$BENCH_LOG" 2>&1 || bench_die "crun run failed (see $BENCH_LOG)"
            else
                F run --rm --name bench-run "$IMAGE" -- true >>"$BENCH_LOG" 2>&1 || bench_die "fukastor run failed (see $BENCH_LOG)"
            fi
        done
        t1=$(date +%s%N)
        b1=$(busy_ticks)
        wall_us=$(((t1 - t0) / 1000 / CPU_RUNS))
        busy_us=$(((b1 - b0) * 1000000 / HZ / CPU_RUNS))
        CPU_ROWS+=("$k $wall_us $busy_us")
        printf 'cpu\t%s\t%s\t%s\n' "$k" "$wall_us" "$busy_us" >>"$RESULTS"
    done
fi

# --- part "disk" ------------------------------------------------------------------

du_b() {
    local total=0 d
    for d in "$@"; do
        [[ -e $d ]] && total=$((total + $(du -sB1 "$d" | cut -f1)))
    done
    echo "$total"
}
fk_disk() { du_b "$STORE/fukastor/pool/layers" "$STORE/fukastor/containers"; }
pm_disk() { du_b "$PODMAN_DIR/root"; }

# Waits until the volume pool stops shrinking (removed volumes are freed in
# the background) and the server is gone.
fk_settle() {
    wait_server_gone || true
    sync
}

declare -A DISK=()
if ((CONTAINERS > 0)); then
    bench_say "part disk: $CONTAINERS containers, created, then run"
    fk_settle
    TEMPLATE_USED=$(F --json volume ls | jq '[.[] | select(.name | startswith("template.")) | .used] | add // 0')
    # fukastor, created.
    sync
    base=$(fk_disk)
    for ((i = 1; i <= CONTAINERS; i++)); do F create "$IMAGE" --name "c$i" >>"$BENCH_LOG"; done
    sync
    DISK[fukastor_created]=$(($(fk_disk) - base))
    for ((i = 1; i <= CONTAINERS; i++)); do F rm "c$i" >>"$BENCH_LOG"; done
    fk_settle
    # fukastor, ran once (stopped, with their bundles).
    base=$(fk_disk)
    for ((i = 1; i <= CONTAINERS; i++)); do F run --name "r$i" "$IMAGE" -- true >>"$BENCH_LOG" 2>&1; done
    fk_settle
    DISK[fukastor_ran]=$(($(fk_disk) - base))
    for ((i = 1; i <= CONTAINERS; i++)); do F rm "r$i" >>"$BENCH_LOG"; done
    # podman, created.
    sync
    base=$(pm_disk)
    for ((i = 1; i <= CONTAINERS; i++)); do P create --name "c$i" "$PODMAN_IMAGE" true >>"$BENCH_LOG" 2>&1; done
    sync
    DISK[podman_created]=$(($(pm_disk) - base))
    P rm -a -f >>"$BENCH_LOG" 2>&1
    # podman, ran once.
    sync
    base=$(pm_disk)
    for ((i = 1; i <= CONTAINERS; i++)); do
        P run --name "r$i" --network none "$PODMAN_IMAGE" true >>"$BENCH_LOG" 2>&1
    done
    sync
    DISK[podman_ran]=$(($(pm_disk) - base))
    P rm -a -f >>"$BENCH_LOG" 2>&1
    for key in "${!DISK[@]}"; do printf 'disk\t%s\t%s\n' "$key" "${DISK[$key]}" >>"$RESULTS"; done
    printf 'disk\tfukastor_template\t%s\n' "$TEMPLATE_USED" >>"$RESULTS"
fi

# --- report -----------------------------------------------------------------------

med() { read -r -a v <<<"${SAMPLES[$1]}"; bench_median "${v[@]}"; }
worst() { read -r -a v <<<"${SAMPLES[$1]}"; bench_max "${v[@]}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "–" }'; }
title() {
    case $1 in
    fukastor-cold) echo "fukastor run --rm (volume server not running)" ;;
    floor) echo "crun run on an unpacked directory (the floor)" ;;
    floor-warm) echo "the floor, cgroup lock warmed before crun starts" ;;
    fukastor) echo "fukastor run --rm" ;;
    podman-nonet) echo "podman run --rm --network none" ;;
    podman) echo "podman run --rm" ;;
    esac
}
kib_each() { awk -v b="$1" -v n="$CONTAINERS" 'BEGIN { printf "%.0f KiB", b / n / 1024 }'; }

floor_med= warm_med=
[[ -n ${SAMPLES[floor]:-} ]] && floor_med=$(med floor)
[[ -n ${SAMPLES[floor-warm]:-} ]] && warm_med=$(med floor-warm)
echo
echo "## bench-run: \`true\` in a new container ($IMAGE, $RUNS runs each, ${PAUSE} s idle before each)"
echo
echo "$(bench_machine); work dir $(bench_fs_of "$WORK"); $(crun --version | head -n1); $(podman --version)"
echo
printf '| | median | worst | median / floor | median / floor-warm |\n|---|--:|--:|--:|--:|\n'
for k in floor floor-warm fukastor fukastor-cold podman-nonet podman; do
    [[ -n ${SAMPLES[$k]:-} ]] || continue
    m=$(med "$k")
    printf '| %s | %s | %s | %s | %s |\n' "$(title "$k")" "$(bench_ms "$m")" "$(bench_ms "$(worst "$k")")" \
        "$( [[ -n $floor_med ]] && ratio "$m" "$floor_med" || echo –)" \
        "$( [[ -n $warm_med ]] && ratio "$m" "$warm_med" || echo –)"
done
echo
echo "Setup (once): fukastor pull $(bench_ms "$t_pull"), first fukastor run (ext4 template built) $(bench_ms "$t_first"), umoci unpack $(bench_ms "$t_unpack"), skopeo copy to podman's storage $(bench_ms "$t_skopeo")."
if ((PHASES > 0)); then
    pmed() { awk -v k="$1" -v c="$2" '$1 == k { print $c }' "$WORK/phases.tsv" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    echo
    echo "## bench-run: where the time goes ($PHASES runs each, ${PAUSE} s idle before each; kernel process events)"
    echo
    printf '| | before crun | crun | after crun | exit |\n|---|--:|--:|--:|--:|\n'
    for k in floor fukastor; do
        printf '| %s | %s | %s | %s | %s |\n' "$(title "$k")" "$(bench_ms "$(pmed "$k" 2)")" "$(bench_ms "$(pmed "$k" 3)")" \
            "$( [[ $k == floor ]] && echo – || bench_ms "$(pmed "$k" 4)")" "$(bench_ms "$(pmed "$k" 5)")"
    done
    echo
    echo "before crun: from the harness's marker to crun's exec (fukastor: its start, create, mount, config.json); crun: crun's exec to its exit; after crun: to the exit of fukastor's last thread (unmount, removal); exit: from that exit to the harness's SIGCHLD (the kernel tearing the process down). Medians of each column."
fi
if ((CPU_RUNS > 0)); then
    echo
    echo "## bench-run: how busy the machine is ($CPU_RUNS back-to-back runs per block; /proc/stat)"
    echo
    printf '| block | wall per run | CPU busy per run (all CPUs) | CPUs in use (busy / wall) |\n|---|--:|--:|--:|\n'
    for row in "${CPU_ROWS[@]}"; do
        read -r k w b <<<"$row"
        printf '| %s | %s | %s | %s |\n' "$(title "$k")" "$(bench_ms "$w")" "$(bench_ms "$b")" "$(awk -v b="$b" -v w="$w" 'BEGIN { printf "%.2f", b / w }')"
    done
fi
if ((CONTAINERS > 0)); then
    echo
    echo "## bench-run: disk used by $CONTAINERS stopped containers of $IMAGE"
    echo
    printf '| | fukastor (volume layers + records) | podman (graphroot growth) |\n|---|--:|--:|\n'
    printf '| created (`create`) | %s (%s each) | %s (%s each) |\n' \
        "$(bench_mib "${DISK[fukastor_created]}") MiB" "$(kib_each "${DISK[fukastor_created]}")" \
        "$(bench_mib "${DISK[podman_created]}") MiB" "$(kib_each "${DISK[podman_created]}")"
    printf '| ran `true` once, stopped (`run` without --rm) | %s (%s each) | %s (%s each) |\n' \
        "$(bench_mib "${DISK[fukastor_ran]}") MiB" "$(kib_each "${DISK[fukastor_ran]}")" \
        "$(bench_mib "${DISK[podman_ran]}") MiB" "$(kib_each "${DISK[podman_ran]}")"
    echo
    echo "fukastor's ext4 template, built once per store and shared by all containers: $(bench_mib "$TEMPLATE_USED") MiB (not in the figures above)."
fi

echo
echo "## Goals"
goal() {
    local what=$1 ok=$2
    if ((ok)); then echo "- $what: **met**"; else echo "- $what: **not met**"; fi
}
if [[ -n ${SAMPLES[fukastor]:-} && -n $floor_med ]]; then
    fm=$(med fukastor)
    goal "fukastor run --rm within 1.5x of the crun floor (median $(bench_ms "$fm") vs $(bench_ms "$floor_med"): $(ratio "$fm" "$floor_med")x; with a ${PAUSE} s pause before each run, --pause 0 gives the back-to-back ratio)" \
        "$((fm * 2 <= floor_med * 3))"
fi
if [[ -n ${SAMPLES[fukastor]:-} && -n $warm_med ]]; then
    fm=$(med fukastor)
    echo "- not a goal, for reading the one above: against crun started with the grace period already behind it (floor-warm, median $(bench_ms "$warm_med")): $(ratio "$fm" "$warm_med")x"
fi
if [[ -n ${SAMPLES[fukastor]:-} && -n ${SAMPLES[podman-nonet]:-} ]]; then
    fm=$(med fukastor) pm=$(med podman-nonet)
    goal "fukastor run --rm at most half of podman's time (podman --network none, median $(bench_ms "$fm") vs $(bench_ms "$pm"): $(ratio "$fm" "$pm")x)" \
        "$((fm * 2 <= pm))"
fi
bench_say "done in $(bench_secs $(($(bench_now_us) - T_START))) s; raw figures in $RESULTS, log in $BENCH_LOG"
