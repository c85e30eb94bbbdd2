# shellcheck shell=bash
#
# integration/lib/common.sh: output helpers shared by the integration scripts
# (section headers, timed steps, messages). Sourced, never executed.

# A section header that stands out in a CI log.
section() {
    printf '\n==== %s ====\n' "$*"
}

info() { printf '  %s\n' "$*"; }
warn() { printf '  WARNING: %s\n' "$*" >&2; }
fatal() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

# Microseconds since the epoch; seconds with one decimal from a duration.
now_us() { echo "${EPOCHREALTIME/./}"; }
fmt_duration() {
    local us=$1 s
    s=$((us / 1000000))
    if ((s >= 60)); then
        printf '%dm%02ds' $((s / 60)) $((s % 60))
    else
        printf '%d.%01ds' "$s" $((us % 1000000 / 100000))
    fi
}

# timed NAME CMD...: run CMD, record "NAME  duration  status" in TIMED_STEPS,
# return CMD's status (so callers can decide whether a failure is fatal).
TIMED_STEPS=()
timed() {
    local name=$1 t0 rc=0
    shift
    t0=$(now_us)
    "$@" || rc=$?
    TIMED_STEPS+=("$(printf '%-24s %8s  %s' "$name" "$(fmt_duration $(($(now_us) - t0)))" \
        "$( ((rc == 0)) && echo ok || echo "FAILED (exit $rc)")")")
    return "$rc"
}
