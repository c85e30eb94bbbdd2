# shellcheck shell=bash
#
# integration/lib/packages.sh: installs the Debian packages the tests and the
# fixtures need, only those missing, with `apt-get update` run at most once.
# Sourced by integration/run-tests.sh.

# Tools used by tests, fixtures and host fixes.
# shellcheck disable=SC2034  # used by run-tests.sh
FUKASTOR_TEST_PACKAGES=(
    crun podman skopeo umoci fuse3 e2fsprogs erofs-utils debootstrap busybox-static
    libcap2-bin jq attr kmod util-linux tar gzip zstd ca-certificates
)
# What building the crate needs besides a Rust toolchain (C compiler for
# vendored C code such as zstd/Lua; perl and make for the vendored OpenSSL;
# libfuse3 headers for FUSE bindings).
# shellcheck disable=SC2034  # used by run-tests.sh
FUKASTOR_BUILD_PACKAGES=(gcc libc6-dev make perl pkg-config libfuse3-dev)

# True when PACKAGE is installed (dpkg status "ii").
package_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == ii* ]]
}

# ensure_packages PKG...: install the missing ones.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        info "all ${#} packages installed"
        return 0
    fi
    info "missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${FUKASTOR_APT_UPDATED:-} ]]; then
        info "apt-get update"
        apt-get update -q </dev/null
        FUKASTOR_APT_UPDATED=1
    fi
    apt-get install -y -q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
    for pkg in "${missing[@]}"; do
        package_installed "$pkg" || fatal "package $pkg is still not installed after apt-get install"
    done
}
