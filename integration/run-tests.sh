#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
#
# run-tests.sh: the one command that runs every fukastor test on a fresh
# Debian bookworm machine (as root; works with CI=true and no stdin):
#
#   1. installs the Debian packages the tests need (apt-get, only if missing)
#   2. applies the host fixes of DESIGN.md section 9 (integration/lib/host-fixes.sh)
#      and loads the fuse, overlay, erofs and loop modules
#   3. builds the reference images (integration/fixtures.sh; instant when built)
#   4. builds the crate and its tests (cargo, release profile)
#   5. runs `cargo test --release --all-targets --no-fail-fast`
#
# Usage: integration/run-tests.sh [CARGO_TEST_ARGS...]
#   With arguments, step 5 runs `cargo test --release ARGS...` instead, e.g.
#   `integration/run-tests.sh --test fidelity` or `... -- bookworm`.
#
# Environment: FUKASTOR_FIXTURES (fixtures directory, default
# /var/tmp/fukastor-fixtures), FUKASTOR_SKIP_APT=1 (do not install packages),
# CARGO_TARGET_DIR (as usual). Exits non-zero if any step or test fails.

set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
# shellcheck source=lib/common.sh
source "$ROOT/integration/lib/common.sh"
# shellcheck source=lib/packages.sh
source "$ROOT/integration/lib/packages.sh"
# shellcheck source=lib/host-fixes.sh
source "$ROOT/integration/lib/host-fixes.sh"

exec </dev/null
export CI=${CI:-}
export DEBIAN_FRONTEND=noninteractive
export FUKASTOR_FIXTURES=${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}
# A Rust toolchain installed with rustup is not on root's PATH under sudo.
for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
    [[ -d $d && ":$PATH:" != *":$d:"* ]] && PATH=$d:$PATH
done
export PATH

T_START=$(now_us)

# Runs a cargo test command, keeps its output on the terminal, and adds up
# its "test result:" lines into one closing line for the summary.
COUNTS=""
run_and_count() {
    local log rc=0
    log=$(mktemp)
    "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    COUNTS=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
        END { printf "%d passed, %d failed", p, f }' "$log")
    rm -f "$log"
    return "$rc"
}

finish() {
    local rc=$?
    section "summary"
    printf '  %s\n' "${TIMED_STEPS[@]}"
    printf '  %-24s %8s\n' "total" "$(fmt_duration $(($(now_us) - T_START)))"
    if ((rc == 0)); then
        printf '\nALL TESTS PASSED\n'
    else
        printf '\nFAILED (exit %d)\n' "$rc"
    fi
    # The last line: every test the run executed, added up.
    [[ -z $COUNTS ]] || printf 'tests: %s\n' "$COUNTS"
}
trap finish EXIT

section "[1/5] environment"
[[ $EUID -eq 0 ]] || fatal "run-tests.sh must run as root (it installs packages, mounts filesystems, runs containers); try: sudo -E $0"
info "repository: $ROOT"
info "kernel: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo) RAM"
info "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
command -v cargo >/dev/null ||
    fatal "cargo not found: install a Rust toolchain (>= the rust-version in Cargo.toml) with rustup"
info "rust: $(rustc --version), $(cargo --version)"
info "CI=${CI:-<unset>}, fixtures: $FUKASTOR_FIXTURES"

section "[2/5] Debian packages"
if [[ ${FUKASTOR_SKIP_APT:-0} == 1 ]]; then
    info "FUKASTOR_SKIP_APT=1: not installing anything"
else
    timed "packages" ensure_packages "${FUKASTOR_TEST_PACKAGES[@]}" "${FUKASTOR_BUILD_PACKAGES[@]}"
fi

section "[3/5] host fixes and kernel modules"
timed "host fixes" apply_host_fixes

section "[4/5] fixtures (integration/fixtures.sh)"
timed "fixtures" "$ROOT/integration/fixtures.sh" || fatal "integration/fixtures.sh failed"

section "[5/5] cargo build and test (release)"
cd "$ROOT"
timed "cargo build" cargo test --release --all-targets --no-run ||
    fatal "the crate or its tests do not compile"
if (($#)); then
    info "cargo test --release $*"
    timed "cargo test" run_and_count cargo test --release "$@"
else
    info "cargo test --release --all-targets --no-fail-fast"
    timed "cargo test" run_and_count cargo test --release --all-targets --no-fail-fast
fi
