# shellcheck shell=bash
#
# integration/lib/host-fixes.sh: the host adjustments of DESIGN.md section 9,
# each idempotent (checked first, applied only when needed), plus the kernel
# modules the tests use. Sourced by integration/run-tests.sh; every function
# prints what it found and what it did.

# crun refuses cgroups "hybrid mode" while the unified hierarchy owns the
# hugetlb controller; mounting that controller on a v1 hierarchy lets crun
# and podman run. Nothing to do on a pure cgroup v2 host.
fix_hugetlb_cgroup() {
    local fstype
    fstype=$(stat -f -c %T /sys/fs/cgroup 2>/dev/null || echo none)
    if [[ $fstype == cgroup2fs ]]; then
        info "cgroups: unified (v2) only, no hugetlb fix needed"
        return 0
    fi
    if [[ $fstype == none ]]; then
        warn "cgroups: /sys/fs/cgroup is missing, crun/podman tests will fail"
        return 0
    fi
    if ! grep -qw '^hugetlb' /proc/cgroups; then
        info "cgroups: kernel has no hugetlb controller, nothing to do"
        return 0
    fi
    if findmnt -n -t cgroup -o OPTIONS /sys/fs/cgroup/hugetlb 2>/dev/null | grep -qw hugetlb; then
        info "cgroups: hugetlb already mounted on v1 at /sys/fs/cgroup/hugetlb"
        return 0
    fi
    mkdir -p /sys/fs/cgroup/hugetlb
    if mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb; then
        info "cgroups: mounted the hugetlb controller on v1 at /sys/fs/cgroup/hugetlb (for crun)"
    else
        warn "cgroups: could not mount hugetlb on v1; crun may refuse hybrid mode"
    fi
}

# podman 4.3 gives containers RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 4194304
# by default; on a host whose hard limits are lower, every container fails to
# start. A containers.conf drop-in sets defaults within the hard limits.
fix_podman_ulimits() {
    local conf_dir=/etc/containers/containers.conf.d
    local conf=$conf_dir/50-fukastor-tests.conf
    local nofile nproc want
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited ]] && nproc=4194304
    # podman 4.3 lowers its own RLIMIT_NPROC to kernel.pid_max before it
    # starts crun; a container limit above that fails with EPERM in crun.
    local pid_max
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
    ((nproc > pid_max)) && nproc=$pid_max
    if ((nofile >= 1048576 && nproc >= 4194304)); then
        info "podman: hard rlimits (nofile $nofile, nproc $nproc) fit podman's defaults"
        return 0
    fi
    want=$(printf '%s\n' \
        "# Written by fukastor integration/lib/host-fixes.sh: podman's default rlimits" \
        "# exceed this host's hard limits (see DESIGN.md section 9)." \
        "[containers]" \
        "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]")
    if [[ -f $conf && "$(cat "$conf")" == "$want" ]]; then
        info "podman: $conf already sets default_ulimits (nofile $nofile, nproc $nproc)"
        return 0
    fi
    mkdir -p "$conf_dir"
    printf '%s\n' "$want" >"$conf.tmp"
    mv "$conf.tmp" "$conf"
    info "podman: wrote $conf (default_ulimits nofile $nofile, nproc $nproc)"
}

# Loads fuse, overlay, erofs and loop unless present (built in or loaded),
# then reports what is still missing.
load_kernel_modules() {
    local -A present=()
    grep -qw fuse /proc/filesystems && present[fuse]=1
    grep -qw overlay /proc/filesystems && present[overlay]=1
    grep -qw erofs /proc/filesystems && present[erofs]=1
    [[ -e /dev/loop-control ]] && present[loop]=1
    local m missing=()
    for m in fuse overlay erofs loop; do
        if [[ -n ${present[$m]:-} ]]; then
            info "kernel: $m available"
        elif command -v modprobe >/dev/null && modprobe "$m" 2>/dev/null; then
            info "kernel: loaded module $m"
        else
            missing+=("$m")
        fi
    done
    # Re-check after modprobe (a loaded module registers its filesystem).
    local still=()
    for m in "${missing[@]}"; do
        case $m in
            loop) [[ -e /dev/loop-control ]] || still+=("$m") ;;
            *) grep -qw "$m" /proc/filesystems || still+=("$m") ;;
        esac
    done
    if ((${#still[@]})); then
        warn "kernel: not available: ${still[*]} (mount tests will fail)"
    fi
    [[ -e /dev/fuse ]] || warn "kernel: /dev/fuse is missing (FUSE tests will fail)"
}

# Debian's udev rules make /dev/fuse 0666 so that normal users can mount
# through the setuid fusermount3; machines without udev (this kind) leave it
# 0600 root, and then unprivileged FUSE mounts fail with EACCES (libfuse and
# fuser alike open /dev/fuse before falling back to fusermount3).
fix_dev_fuse_mode() {
    [[ -e /dev/fuse ]] || return 0
    local mode
    mode=$(stat -c %a /dev/fuse)
    if [[ $mode == 666 ]]; then
        info "/dev/fuse: mode 0666 already"
    else
        chmod 0666 /dev/fuse
        info "/dev/fuse: mode $mode -> 0666 (what Debian's udev rule sets)"
    fi
}

apply_host_fixes() {
    fix_hugetlb_cgroup
    fix_podman_ulimits
    load_kernel_modules
    fix_dev_fuse_mode
}
