# shellcheck shell=bash
# bench-common.sh: helpers shared by fukastor's hand-run benchmarks
# (integration/bench-*.sh). Source it; it defines functions and nothing runs.
#
#   bench_say / bench_die         messages on stderr, prefixed with $BENCH_NAME
#   bench_now_us                  wall clock in microseconds (bash's EPOCHREALTIME)
#   bench_secs US                 microseconds -> "1.234" seconds
#   bench_drop_caches             sync, then drop the page cache, dentries and inodes
#   bench_median N...             median of integers (middle one, or mean of the two)
#   bench_timed OUTVAR CMD...     run CMD under GNU time (output to $BENCH_LOG); store
#                                 its wall time in microseconds in OUTVAR, its CPU time
#                                 (user+sys, us) in OUTVAR_cpu and its peak RSS (KiB) in
#                                 OUTVAR_rss; exit with an error if CMD fails
#   bench_apt_install PKG...      apt-get install the packages that are not installed
#   bench_machine                 one line: CPU model, cores, memory, kernel
#   bench_fs_of DIR               "ext4 on /dev/vda" for the filesystem holding DIR
#   bench_mb BYTES                bytes -> MB (10^6) with one decimal
#   bench_mib BYTES               bytes -> MiB (2^20) with one decimal
#   bench_run_us OUTVAR CMD...    run CMD (a command or a shell function, in this shell;
#                                 output to $BENCH_LOG) and store its wall time in
#                                 microseconds in OUTVAR; exit with an error if it fails.
#                                 No GNU time around it: for steps of a few milliseconds
#   bench_max N...                largest of integers
#   bench_ms US                   microseconds -> "1.2 ms" (below 1 s) or "1.23 s"
#   bench_mounts_under DIR        mountpoints below DIR, deepest first: "TARGET FSTYPE"
#   bench_loops_under DIR         loop devices whose backing file is below DIR
#   oci_manifest_of LAYOUT TAG    digest (sha256:...) of the manifest tagged TAG
#   oci_layers_of LAYOUT TAG      "digest mediatype" of each layer, one a line
#   oci_layer_tar_size LAYOUT DIGEST MEDIATYPE
#                                 uncompressed size in bytes of one layer blob

: "${BENCH_NAME:=bench}"
: "${BENCH_LOG:=/dev/null}"

bench_say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
bench_die() { printf '[%s] ERROR: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

bench_now_us() { echo "${EPOCHREALTIME/./}"; }

bench_secs() { printf '%d.%03d' $(($1 / 1000000)) $(($1 % 1000000 / 1000)); }

bench_drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

bench_median() {
    local -a v
    mapfile -t v < <(printf '%s\n' "$@" | sort -n)
    local n=${#v[@]}
    ((n > 0)) || bench_die "median of nothing"
    if ((n % 2)); then
        echo "${v[n / 2]}"
    else
        echo $(((v[n / 2 - 1] + v[n / 2]) / 2))
    fi
}

bench_timed() {
    local __out=$1 t0 t1 rc=0 tf u s rss
    shift
    tf=$(mktemp)
    printf '\n$ %s\n' "$*" >>"$BENCH_LOG"
    t0=$(bench_now_us)
    /usr/bin/time -f '%U %S %M' -o "$tf" "$@" >>"$BENCH_LOG" 2>&1 || rc=$?
    t1=$(bench_now_us)
    if ((rc != 0)); then
        printf '[%s] command failed (exit %d): %s\n--- last lines of %s:\n' \
            "$BENCH_NAME" "$rc" "$*" "$BENCH_LOG" >&2
        tail -n 30 "$BENCH_LOG" >&2
        rm -f "$tf"
        exit 1
    fi
    read -r u s rss < <(tail -n1 "$tf")
    rm -f "$tf"
    printf -v "$__out" '%s' $((t1 - t0))
    printf -v "${__out}_cpu" '%s' "$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.0f", (u + s) * 1e6 }')"
    printf -v "${__out}_rss" '%s' "$rss"
}

bench_apt_install() {
    local -a missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    bench_say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$BENCH_LOG" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$BENCH_LOG" 2>&1 ||
        bench_die "apt-get install ${missing[*]} failed (see $BENCH_LOG)"
}

bench_machine() {
    local cpu mem
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    printf '%s, %s cores, %s RAM, Linux %s\n' "${cpu:-unknown CPU}" "$(nproc)" "$mem" "$(uname -r)"
}

bench_fs_of() {
    local fstype src
    read -r fstype src < <(df --output=fstype,source "$1" | tail -n1)
    printf '%s on %s' "$fstype" "$src"
}

bench_mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
bench_mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

bench_run_us() {
    local __out=$1 t0 t1 rc=0
    shift
    printf '\n$ %s\n' "$*" >>"$BENCH_LOG"
    t0=${EPOCHREALTIME/./}
    "$@" >>"$BENCH_LOG" 2>&1 || rc=$?
    t1=${EPOCHREALTIME/./}
    if ((rc != 0)); then
        printf '[%s] command failed (exit %d): %s\n--- last lines of %s:\n' \
            "$BENCH_NAME" "$rc" "$*" "$BENCH_LOG" >&2
        tail -n 30 "$BENCH_LOG" >&2
        exit 1
    fi
    printf -v "$__out" '%s' $((t1 - t0))
}

bench_max() { printf '%s\n' "$@" | sort -n | tail -n1; }

bench_ms() {
    awk -v us="$1" 'BEGIN { if (us < 1e6) printf "%.1f ms", us / 1e3; else printf "%.2f s", us / 1e6 }'
}

bench_mounts_under() {
    findmnt -rn -o TARGET,FSTYPE | awk -v p="${1%/}/" 'index($1, p) == 1' |
        awk '{ print length($1), $0 }' | sort -rn | cut -d' ' -f2-
}

bench_loops_under() {
    losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v p="${1%/}/" 'index($2, p) == 1 { print $1 }'
}

oci_manifest_of() {
    jq -r --arg t "$2" \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
        "$1/index.json" | head -n1
}

oci_layers_of() {
    local m
    m=$(oci_manifest_of "$1" "$2")
    [[ -n $m ]] || bench_die "no tag $2 in $1"
    jq -r '.layers[] | "\(.digest) \(.mediaType)"' "$1/blobs/${m/://}"
}

oci_layer_tar_size() {
    local blob=$1/blobs/${2/://}
    case $3 in
    *+gzip | *.tar.gzip) gzip -dc "$blob" | wc -c ;;
    *+zstd) zstd -dc "$blob" | wc -c ;;
    *) stat -c %s "$blob" ;;
    esac
}
