#!/usr/bin/env bash
# examples/ci-test-containers.sh: the CI pattern on fukastor. Set a container
# up once, snapshot it, then give every test a pristine copy by rolling back
# to the snapshot (constant time) instead of creating a container again.
# Run as root.
#
#   1. fukastor pull SOURCE ci-image
#   2. fukastor run --name ci ci-image -- sh -c 'ENTRY'     the setup, run once
#      (ENTRY runs /ci/job.sh when there is one, the setup otherwise)
#   3. fukastor snapshot create ci --name clean
#   4. for each test:  snapshot rollback ci clean; container mount ci   (the reset)
#                      write the test to ROOTFS/ci/job.sh; fukastor start ci   (the test)
#                      container umount ci
#   and prints the time of each reset (rollback + mount) and each test.
#
# Every test checks that it starts from the state the setup left (no file of
# an earlier test, all setup files there) and then dirties it on purpose.
#
# Usage: examples/ci-test-containers.sh [--image SOURCE] [--tests N] [--keep]
#   --image SOURCE  what to pull (default oci:/var/tmp/fukastor-fixtures/oci:bookworm,
#                   built by integration/fixtures.sh); needs /bin/sh in the image
#   --tests N       how many tests (default 10)
#   --keep          keep the container (and a temporary store) at the end
# Environment: FUKASTOR (the binary; default target/release/fukastor of this
# checkout, else fukastor in PATH), FUKASTOR_STORE (default: a temporary store,
# removed at the end).
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
SOURCE=oci:/var/tmp/fukastor-fixtures/oci:bookworm
TESTS=10
KEEP=0
while (($#)); do
    case $1 in
    --image) SOURCE=$2; shift 2 ;;
    --tests) TESTS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $TESTS =~ ^[1-9][0-9]*$ ]] || { echo "--tests wants a positive number" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "run as root (containers mount filesystems and run crun)" >&2; exit 1; }

if [[ -n ${FUKASTOR:-} ]]; then
    fk=$FUKASTOR
elif [[ -x $HERE/../target/release/fukastor ]]; then
    fk=$HERE/../target/release/fukastor
else
    fk=$(command -v fukastor) || { echo "no fukastor binary: cargo build --release" >&2; exit 1; }
fi
own_store=0
if [[ -z ${FUKASTOR_STORE:-} ]]; then
    FUKASTOR_STORE=$(mktemp -d /var/tmp/fukastor-ci-example.XXXXXX)
    own_store=1
fi
export FUKASTOR_STORE
F() { "$fk" "$@"; }

now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }

cleanup() {
    local rc=$?
    if ((KEEP)); then
        echo "kept: container ci in store $FUKASTOR_STORE"
        exit "$rc"
    fi
    F container umount ci >/dev/null 2>&1 || true
    F rm --force ci >/dev/null 2>&1 || true
    if ((own_store)); then
        # The volume server stops (and unmounts) 2 s after the last volume goes.
        local i
        for ((i = 0; i < 150; i++)); do
            findmnt -rn -o TARGET | grep -q "^$FUKASTOR_STORE/" || break
            sleep 0.1
        done
        rm -rf "$FUKASTOR_STORE"
    fi
    exit "$rc"
}
trap cleanup EXIT

echo "store $FUKASTOR_STORE, binary $fk"
F -q pull "$SOURCE" ci-image >/dev/null
echo "pulled $SOURCE as ci-image"

# The container's command: the test in /ci/job.sh if there is one, else the
# setup (here: a "dependency install" writing a few hundred files).
# shellcheck disable=SC2016  # expanded inside the container
entry='if [ -e /ci/job.sh ]; then exec sh /ci/job.sh; fi
set -e
mkdir -p /ci /srv/deps
i=0
while [ $i -lt 300 ]; do echo "dependency $i" > /srv/deps/dep-$i.txt; i=$((i + 1)); done
echo "setup done at $(date +%s)" > /ci/ready
echo "setup: $(ls /srv/deps | wc -l) files in /srv/deps"'

t0=$(now_us)
F run --name ci ci-image -- sh -c "$entry"
t1=$(now_us)
echo "setup run: $(ms $((t1 - t0))) ms"

t0=$(now_us)
F snapshot create ci --name clean
t1=$(now_us)
echo "snapshot create ci --name clean: $(ms $((t1 - t0))) ms"

printf '\n%-6s %12s %12s %12s  %s\n' test "reset (ms)" "test (ms)" "umount (ms)" result
resets=() runs=() failed=0
for ((n = 1; n <= TESTS; n++)); do
    t0=$(now_us)
    F snapshot rollback ci clean
    rootfs=$(F container mount ci)
    t1=$(now_us)
    # Test n: the state must be the setup's, untouched by tests 1..n-1.
    cat >"$rootfs/ci/job.sh" <<EOF
set -e
[ -e /ci/ready ] || { echo "setup state missing"; exit 1; }
[ ! -e /ci/dirty ] || { echo "state of \$(cat /ci/dirty) leaked"; exit 1; }
[ \$(ls /srv/deps | wc -l) -eq 300 ] || { echo "setup files missing"; exit 1; }
echo "test $n" > /ci/dirty
rm -f /srv/deps/dep-1*.txt
dd if=/dev/zero of=/srv/scratch-$n bs=64k count=16 2>/dev/null
EOF
    rc=0
    out=$(F start ci 2>&1) || rc=$?
    t2=$(now_us)
    F container umount ci
    t3=$(now_us)
    result=ok
    if ((rc != 0)); then
        result="FAILED (exit $rc)"
        failed=$((failed + 1))
    fi
    resets+=($((t1 - t0)))
    runs+=($((t2 - t1)))
    printf '%-6s %12s %12s %12s  %s\n' "$n" "$(ms $((t1 - t0)))" "$(ms $((t2 - t1)))" "$(ms $((t3 - t2)))" "$result"
    ((rc == 0)) || printf '       | %s\n' "${out//$'\n'/$'\n'       | }"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
worst() { printf '%s\n' "$@" | sort -n | tail -n1; }
echo
echo "reset (rollback + mount): median $(ms "$(median "${resets[@]}")") ms, worst $(ms "$(worst "${resets[@]}")") ms"
echo "test (fukastor start):    median $(ms "$(median "${runs[@]}")") ms, worst $(ms "$(worst "${runs[@]}")") ms"
echo "$((TESTS - failed)) of $TESTS tests passed"
((failed == 0))
