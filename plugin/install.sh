#!/usr/bin/env bash
#
# plugin/install.sh: installs fukastor as podman's root filesystem provider:
#
#   1. the binary            PREFIX/bin/fukastor (copied from --bin)
#   2. the OCI hooks         HOOKS_DIR/fukastor-precreate.json, fukastor-poststop.json
#                            (from hooks/, with hook.path = the installed binary and
#                            FUKASTOR_STORE = the store)
#   3. a containers.conf     CONF_DIR/60-fukastor.conf (from plugin/containers.conf):
#      drop-in               hooks_dir = podman's default directory plus HOOKS_DIR,
#                            default_ulimits that fit this host's hard limits
#
# Then `podman run --annotation io.fukastor.image=IMAGE --rootfs EMPTYDIR CMD`
# runs CMD on a fukastor container of IMAGE (see hooks/README.md).
#
# Usage: plugin/install.sh [--prefix DIR] [--bin PATH] [--store DIR]
#                          [--hooks-dir DIR] [--conf-dir DIR] [--uninstall]
#   --prefix DIR     where the binary goes: DIR/bin/fukastor (default /usr/local)
#   --bin PATH       the binary to install (default: target/release/fukastor of
#                    this checkout; build it with `cargo build --release`)
#   --store DIR      the store the hooks use (default /var/lib/fukastor)
#   --hooks-dir DIR  where the hooks go (default /usr/share/containers/oci/hooks.d,
#                    the directory podman 4.3 reads when hooks_dir is not set)
#   --conf-dir DIR   where the containers.conf drop-in goes
#                    (default /etc/containers/containers.conf.d)
#   --uninstall      remove what an install with the same options wrote: the
#                    binary, both hooks and the drop-in (never the store)
#
# Idempotent: every file is compared first and only rewritten (atomically,
# temp file + rename) when it differs; each line of output says what happened
# to one file (installed, updated, unchanged, removed, absent).
# Needs root for the default directories. Uses nothing but bash and coreutils
# (jq, when installed, checks the JSON it writes).

set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(dirname "$HERE")

PREFIX=/usr/local
BIN=
STORE=/var/lib/fukastor
HOOKS_DIR=/usr/share/containers/oci/hooks.d
CONF_DIR=/etc/containers/containers.conf.d
UNINSTALL=0

# podman 4.3's own hooks directory, kept in hooks_dir (setting hooks_dir
# replaces podman's list).
PODMAN_HOOKS_DIR=/usr/share/containers/oci/hooks.d
CONF_NAME=60-fukastor.conf
HOOK_FILES=(fukastor-precreate.json fukastor-poststop.json)
# What the shipped files say, replaced on install.
SHIPPED_BIN=/usr/local/bin/fukastor
SHIPPED_STORE=/var/lib/fukastor
# podman 4.3's default rlimits for containers.
PODMAN_NOFILE=1048576
PODMAN_NPROC=4194304

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() { sed -n '3,/^$/{s/^# \{0,1\}//;p}' "$0"; }

need_arg() {
    if (($# < 2)) || [[ -z $2 ]]; then
        die "$1 needs a value (see --help)"
    fi
}

while (($#)); do
    case $1 in
    --prefix) need_arg "$@"; PREFIX=$2; shift 2 ;;
    --bin) need_arg "$@"; BIN=$2; shift 2 ;;
    --store) need_arg "$@"; STORE=$2; shift 2 ;;
    --hooks-dir) need_arg "$@"; HOOKS_DIR=$2; shift 2 ;;
    --conf-dir) need_arg "$@"; CONF_DIR=$2; shift 2 ;;
    --prefix=* | --bin=* | --store=* | --hooks-dir=* | --conf-dir=*)
        opt=${1%%=*}
        set -- "$opt" "${1#*=}" "${@:2}"
        ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# Absolute, normalised paths: hooks run with podman's working directory.
PREFIX=$(realpath -m -- "$PREFIX")
STORE=$(realpath -m -- "$STORE")
HOOKS_DIR=$(realpath -m -- "$HOOKS_DIR")
CONF_DIR=$(realpath -m -- "$CONF_DIR")
DEST_BIN=$PREFIX/bin/fukastor
CONF_FILE=$CONF_DIR/$CONF_NAME

# A JSON (and TOML basic) string body for $1: backslashes and quotes escaped;
# control characters are refused.
json_escape() {
    local s=$1
    [[ $s != *[[:cntrl:]]* ]] || die "a path with a control character cannot go into the hooks: ${s@Q}"
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '%s' "$s"
}

# write_file DEST MODE < CONTENT: writes DEST only when its content differs,
# through a temporary file renamed over it; says what it did.
write_file() {
    local dest=$1 mode=$2 tmp content
    content=$(cat)
    if [[ -f $dest && "$(cat -- "$dest")" == "$content" ]]; then
        # Same content; only the mode may need fixing.
        chmod "$mode" -- "$dest"
        say "unchanged  $dest"
        return 0
    fi
    local verb=installed
    [[ -e $dest ]] && verb=updated
    mkdir -p -- "$(dirname -- "$dest")"
    tmp=$(mktemp "$dest.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" -- "$tmp"
    mv -f -- "$tmp" "$dest"
    say "$verb  $dest"
}

remove_file() {
    if [[ -e $1 || -L $1 ]]; then
        rm -f -- "$1"
        say "removed  $1"
    else
        say "absent  $1"
    fi
}

# The containers.conf default_ulimits this host needs, or nothing when
# podman's own defaults fit under the hard limits.
ulimits_line() {
    local nofile nproc pid_max
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$PODMAN_NPROC")
    [[ $nofile == unlimited ]] && nofile=$PODMAN_NOFILE
    [[ $nproc == unlimited ]] && nproc=$PODMAN_NPROC
    # podman lowers its own RLIMIT_NPROC to pid_max (seen with strace on
    # podman 4.3.1), and a container cannot get more than podman has.
    ((nproc > pid_max)) && nproc=$pid_max
    ((nofile > PODMAN_NOFILE)) && nofile=$PODMAN_NOFILE
    ((nproc > PODMAN_NPROC)) && nproc=$PODMAN_NPROC
    if ((nofile == PODMAN_NOFILE && nproc == PODMAN_NPROC)); then
        echo "# default_ulimits: not needed here (the hard limits fit podman's defaults)"
    else
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
    fi
}

render_hook() {
    local src=$1 text bin store
    text=$(cat -- "$src")
    bin=$(json_escape "$DEST_BIN")
    store=$(json_escape "$STORE")
    [[ $text == *"\"$SHIPPED_BIN\""* && $text == *"FUKASTOR_STORE=$SHIPPED_STORE\""* ]] ||
        die "$src does not name $SHIPPED_BIN and FUKASTOR_STORE=$SHIPPED_STORE: was it edited?"
    text=${text//"\"$SHIPPED_BIN\""/"\"$bin\""}
    text=${text//"FUKASTOR_STORE=$SHIPPED_STORE\""/"FUKASTOR_STORE=$store\""}
    printf '%s' "$text"
}

render_conf() {
    local src=$HERE/containers.conf text line dirs ul
    dirs="\"$(json_escape "$PODMAN_HOOKS_DIR")\""
    [[ $HOOKS_DIR == "$PODMAN_HOOKS_DIR" ]] || dirs+=", \"$(json_escape "$HOOKS_DIR")\""
    ul=$(ulimits_line)
    while IFS= read -r line || [[ -n $line ]]; do
        case $line in
        default_ulimits\ =*) printf '%s\n' "$ul" ;;
        hooks_dir\ =*) printf 'hooks_dir = [%s]\n' "$dirs" ;;
        *) printf '%s\n' "$line" ;;
        esac
    done <"$src"
}

if ((UNINSTALL)); then
    for f in "${HOOK_FILES[@]}"; do
        dest=$HOOKS_DIR/$f
        if [[ -f $dest ]] && ! grep -q '"hook"' -- "$dest"; then
            die "$dest is not a hooks.d file; leaving it alone"
        fi
        remove_file "$dest"
    done
    remove_file "$CONF_FILE"
    remove_file "$DEST_BIN"
    say "the store $STORE is left as it is (remove it by hand when no longer wanted)"
    exit 0
fi

# The binary to install.
if [[ -z $BIN ]]; then
    BIN=$REPO/target/release/fukastor
    [[ -x $BIN ]] || die "no binary at $BIN: build it (\`cargo build --release\`) or pass --bin PATH"
fi
[[ -f $BIN && -x $BIN ]] || die "--bin $BIN is not an executable file"
"$BIN" hook --help >/dev/null 2>&1 ||
    die "$BIN has no \`hook\` command: it is too old for podman's hooks; build this checkout"
for f in "${HOOK_FILES[@]}"; do
    [[ -f $HERE/../hooks/$f ]] || die "missing $REPO/hooks/$f"
done
[[ -f $HERE/containers.conf ]] || die "missing $HERE/containers.conf"

# 1. The binary (copied to a temporary name and renamed, so a running copy
#    keeps its old file).
src_real=$(readlink -f -- "$BIN")
if [[ -e $DEST_BIN && $(readlink -f -- "$DEST_BIN") == "$src_real" ]]; then
    say "unchanged  $DEST_BIN (it is the --bin file)"
elif [[ -f $DEST_BIN ]] && cmp -s -- "$BIN" "$DEST_BIN"; then
    chmod 0755 -- "$DEST_BIN"
    say "unchanged  $DEST_BIN"
else
    verb=installed
    [[ -e $DEST_BIN ]] && verb=updated
    mkdir -p -- "$PREFIX/bin"
    tmp=$(mktemp "$DEST_BIN.XXXXXX")
    cp -- "$BIN" "$tmp"
    chmod 0755 -- "$tmp"
    mv -f -- "$tmp" "$DEST_BIN"
    say "$verb  $DEST_BIN"
fi

# 2. The hooks.
for f in "${HOOK_FILES[@]}"; do
    text=$(render_hook "$REPO/hooks/$f")
    if command -v jq >/dev/null; then
        printf '%s' "$text" | jq -e '.version == "1.0.0" and (.hook.path | startswith("/"))' >/dev/null ||
            die "the rendered $f is not a valid hooks.d file (a bug in install.sh)"
    fi
    printf '%s' "$text" | write_file "$HOOKS_DIR/$f" 0644
done

# 3. The containers.conf drop-in.
render_conf | write_file "$CONF_FILE" 0644

say "done: podman runs \`$DEST_BIN hook precreate|poststop\` (store $STORE) for containers"
say "annotated io.fukastor.image=IMAGE, e.g.:"
say "  mkdir -p /var/empty/fukastor && podman run --rm --annotation io.fukastor.image=IMAGE --rootfs /var/empty/fukastor CMD"
