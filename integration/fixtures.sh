#!/usr/bin/env bash
#
# fixtures.sh: builds the reference OCI images that fukastor's integration
# tests import and compare against, with real tools (umoci, skopeo,
# debootstrap, GNU tar, setcap).
#
# Output: ${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures} containing
#   oci/                       one OCI image layout with the tags
#     busybox                  2 gzip layers: busybox-static + applet links, then edits (incl. a whiteout)
#     busybox-zstd             the same image, layers recompressed with zstd (skopeo)
#     busybox-uncompressed     the same image, uncompressed layers (skopeo via dir:)
#     bookworm                 debootstrap --variant=minbase bookworm, one layer
#     bookworm-mod             bookworm + a hand-made layer full of edge cases (see build_bookworm_mod)
#     bookworm-python          bookworm + a layer from `apt-get install python3` in a chroot
#   busybox.oci.tar            oci-archive (tag busybox)
#   busybox.docker.tar         docker-archive (busybox:latest)
#   bookworm-mod.docker.tar    docker-archive (bookworm-mod:latest)
#   MANIFEST.txt               what was built: tags, layer media types and digests
#   STAMP                      written last; its content is the recipe version
#
# Idempotent: when STAMP matches FIXTURES_VERSION the script exits at once.
# Otherwise it builds everything in a temporary directory next to the output
# and renames it into place, so an interrupted build is never taken as done.
# Bump FIXTURES_VERSION whenever the recipe below changes.
#
# Needs root (debootstrap, chroot, mknod, setcap, umoci unpack), network
# access to a Debian mirror (taken from /etc/apt, override with
# FUKASTOR_DEBIAN_MIRROR) and: umoci skopeo debootstrap busybox-static
# libcap2-bin attr jq (integration/run-tests.sh installs them).
#
# Environment:
#   FUKASTOR_FIXTURES        output directory (default /var/tmp/fukastor-fixtures)
#   FUKASTOR_FIXTURES_CACHE  debootstrap .deb cache, kept across versions (default $FUKASTOR_FIXTURES.cache)
#   FUKASTOR_DEBIAN_MIRROR   http URL of a Debian mirror (default: from /etc/apt)
#   FUKASTOR_FIXTURES_FORCE  set to 1 to rebuild even when up to date

set -euo pipefail

FIXTURES_VERSION=1
STAMP_TEXT="fukastor-fixtures v${FIXTURES_VERSION}"

F=$(realpath -m "${FUKASTOR_FIXTURES:-/var/tmp/fukastor-fixtures}")
CACHE=${FUKASTOR_FIXTURES_CACHE:-$F.cache}
LOG=$F.build.log

say() { printf '[fixtures] %s\n' "$*"; }
die() { printf '[fixtures] ERROR: %s\n' "$*" >&2; exit 1; }

fixtures_up_to_date() {
    [[ -f $F/STAMP && "$(cat "$F/STAMP")" == "$STAMP_TEXT" ]]
}

if [[ ${FUKASTOR_FIXTURES_FORCE:-0} != 1 ]] && fixtures_up_to_date; then
    say "up to date: $F ($STAMP_TEXT)"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot, mknod, setcap need it)"

# --- tools --------------------------------------------------------------------

check_tools() {
    local missing=() tool pkg
    # tool:Debian package
    for pair in umoci:umoci skopeo:skopeo debootstrap:debootstrap setcap:libcap2-bin \
                getcap:libcap2-bin setfattr:attr jq:jq tar:tar gzip:gzip chroot:coreutils \
                findmnt:util-linux mknod:coreutils flock:util-linux; do
        tool=${pair%%:*} pkg=${pair#*:}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (Debian package $pkg)")
    done
    if [[ ! -x /bin/busybox ]]; then
        missing+=("/bin/busybox (Debian package busybox-static)")
    elif ldd /bin/busybox >/dev/null 2>&1; then
        missing+=("a static /bin/busybox (Debian package busybox-static, not busybox)")
    fi
    if ((${#missing[@]})); then
        printf '[fixtures] missing tool: %s\n' "${missing[@]}" >&2
        die "install the packages above (integration/run-tests.sh does it) and re-run"
    fi
}

# The Debian mirror for debootstrap: the first non-security deb URI in /etc/apt,
# as http (debootstrap fetches with wget/curl before any CA bundle exists).
debian_mirror() {
    if [[ -n ${FUKASTOR_DEBIAN_MIRROR:-} ]]; then
        echo "$FUKASTOR_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
             grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
                 awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }'
           } | grep -E '^https?://' | grep -v -e security -e nodesource -e google | head -n1 || true)
    uri=${uri:-http://deb.debian.org/debian}
    echo "${uri/#https:/http:}"
}

# --- helpers ------------------------------------------------------------------

now_us() { echo "${EPOCHREALTIME/./}"; }
fmt_secs() { printf '%d.%01ds' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

TIMINGS=()
# step NAME FUNCTION...: run a build step, print and remember how long it took.
step() {
    local name=$1 t0 dt
    shift
    say "==> $name"
    t0=$(now_us)
    "$@"
    dt=$(($(now_us) - t0))
    TIMINGS+=("$(printf '%-28s %s' "$name" "$(fmt_secs "$dt")")")
    say "    $name: done in $(fmt_secs "$dt")"
}

# quiet CMD...: run a chatty command with its output in the build log; show the
# end of the log if it fails.
quiet() {
    printf '\n$ %s\n' "$*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        printf '[fixtures] command failed: %s\n--- last lines of %s:\n' "$*" "$LOG" >&2
        tail -n 40 "$LOG" >&2
        return 1
    fi
}

# Unmount everything at or below a directory, deepest first.
unmount_below() {
    local dir=$1 m
    findmnt -rn -o TARGET | awk -v p="$dir" '$0 == p || index($0, p "/") == 1' | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# Remove a scratch tree safely: never recurse into a mount that was left behind.
remove_tree() {
    local dir=$1
    [[ -e $dir ]] || return 0
    unmount_below "$dir"
    rm -rf --one-file-system "$dir"
}

# The digest (sha256 hex) of the manifest tagged TAG in layout DIR.
manifest_of() {
    jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
        "$1/index.json" | sed 's/^sha256://'
}

layer_media_types() {
    jq -r '.layers[].mediaType' "$1/blobs/sha256/$(manifest_of "$1" "$2")"
}

# --- images -------------------------------------------------------------------
# Globals while building: W (work dir), O (OCI layout), S (scratch), OUT (output)

build_busybox() {
    local b1=$S/busybox-1 b2=$S/busybox-2 r applet
    umoci new --image "$O:busybox"
    umoci config --image "$O:busybox" --config.cmd /bin/sh --config.env PATH=/bin \
        --config.workingdir / --author "fukastor fixtures.sh"

    # Layer 1: the static busybox, its applets as symlinks, a minimal /etc.
    umoci unpack --image "$O:busybox" "$b1" >/dev/null
    r=$b1/rootfs
    mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/var/log" "$r/dev" "$r/proc" "$r/sys"
    install -m 0755 /bin/busybox "$r/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -s busybox "$r/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    chmod 1777 "$r/tmp"
    chmod 0700 "$r/root"
    umoci repack --image "$O:busybox" "$b1"

    # Layer 2: add, change and delete a few things.
    umoci unpack --image "$O:busybox" "$b2" >/dev/null
    r=$b2/rootfs
    echo 'user:x:1000:1000:user:/home/user:/bin/sh' >>"$r/etc/passwd"    # changed content
    echo 'user:x:1000:' >>"$r/etc/group"
    chmod 0640 "$r/etc/group"                                            # changed mode
    echo fukastor-busybox >"$r/etc/hostname"                             # new file
    mkdir -p "$r/home/user"
    printf 'export PS1="busybox$ "\n' >"$r/home/user/.profile"
    chown -R 1000:1000 "$r/home/user"
    chmod 0750 "$r/home/user"
    [[ -L $r/bin/vi ]] || die "busybox has no vi applet"
    rm "$r/bin/vi"                                                       # whiteout
    ln -sf /bin/busybox "$r/bin/ls"                                      # symlink retargeted
    install -m 4755 /bin/busybox "$r/bin/su-busybox"                     # setuid file
    umoci repack --image "$O:busybox" "$b2"
    remove_tree "$b1"
    remove_tree "$b2"
}

build_busybox_variants() {
    local tmp=$S/zstd-layout
    # skopeo reuses a blob that already exists in the destination, so recompress
    # into a fresh layout first, then copy the zstd image back under its tag.
    quiet skopeo copy --dest-compress-format zstd "oci:$O:busybox" "oci:$tmp:busybox"
    quiet skopeo copy "oci:$tmp:busybox" "oci:$O:busybox-zstd"
    remove_tree "$tmp"
    # Uncompressed OCI layers: decompress into dir:, then let oci: accept them.
    # (docker-archive -> oci with --dest-oci-accept-uncompressed-layers writes a
    # wrong "+gzip" media type with skopeo 1.9.)
    quiet skopeo copy --dest-decompress "oci:$O:busybox" "dir:$S/busybox-dir"
    quiet skopeo copy --dest-oci-accept-uncompressed-layers "dir:$S/busybox-dir" "oci:$O:busybox-uncompressed"
    remove_tree "$S/busybox-dir"

    local t
    for t in $(layer_media_types "$O" busybox-zstd); do
        [[ $t == *+zstd ]] || die "busybox-zstd has a layer of type $t, expected zstd"
    done
    for t in $(layer_media_types "$O" busybox-uncompressed); do
        [[ $t == application/vnd.oci.image.layer.v1.tar ]] || die "busybox-uncompressed has a layer of type $t"
    done
}

build_bookworm() {
    local mirror
    mirror=$(debian_mirror)
    mkdir -p "$CACHE/debootstrap"
    umoci new --image "$O:bookworm"
    umoci config --image "$O:bookworm" --config.cmd /bin/bash \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.env LANG=C.UTF-8 --author "fukastor fixtures.sh"
    umoci unpack --image "$O:bookworm" "$S/bookworm" >/dev/null
    say "    debootstrap --variant=minbase bookworm from $mirror (log: $LOG)"
    quiet debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" bookworm "$S/bookworm/rootfs" "$mirror"
    # debootstrap mounts /proc and /sys in the target while it works; make sure
    # nothing is left mounted before umoci walks the tree.
    unmount_below "$S/bookworm/rootfs"
    say "    $(find "$S/bookworm/rootfs" | wc -l) paths in the rootfs"
    umoci repack --image "$O:bookworm" "$S/bookworm"
    # $S/bookworm/rootfs stays as the pristine base for the derived images.
}

# bookworm-mod: a second layer written with GNU tar (pax format, xattrs) from
# a staging directory, so that it can hold what `umoci repack` never writes:
# an opaque directory and a hardlink to a file of the layer below.
build_bookworm_mod() {
    local base=$S/bookworm/rootfs st=$S/mod-stage layer=$S/mod-layer.tar d
    mkdir -p "$st"

    # Paths of the base image the layer changes; fail loudly if Debian moved them.
    for d in etc/issue.net usr/share/doc/dpkg etc/apt/apt.conf.d etc/debian_version \
             etc/hostname etc/motd srv usr/bin/dpkg etc/issue var/opt; do
        [[ -e $base/$d || -L $base/$d ]] || die "bookworm rootfs has no /$d; update build_bookworm_mod"
    done
    [[ -n "$(ls -A "$base/etc/apt/apt.conf.d")" ]] || die "bookworm /etc/apt/apt.conf.d is empty"
    [[ -d $base/var/opt && -z "$(ls -A "$base/var/opt")" ]] || die "bookworm /var/opt is not an empty dir"

    # Parent directories, same metadata as in the base (fixed again at the end).
    mkdir -p "$st/etc/apt" "$st/usr/share/doc" "$st/usr/bin" "$st/var" "$st/opt"

    # Whiteouts: a file, and a whole directory.
    touch "$st/etc/.wh.issue.net" "$st/usr/share/doc/.wh.dpkg"

    # Opaque directory: /etc/apt/apt.conf.d deleted and recreated with one new file.
    mkdir "$st/etc/apt/apt.conf.d"
    touch "$st/etc/apt/apt.conf.d/.wh..wh..opq"
    echo 'APT::Install-Recommends "false";' >"$st/etc/apt/apt.conf.d/99fukastor"

    # New contents for existing files.
    echo "12.99-fukastor" >"$st/etc/debian_version"
    echo "fukastor-bookworm-mod" >"$st/etc/hostname"

    # Same contents, new mode and owner; a directory with a new mode and owner.
    cp -a "$base/etc/motd" "$st/etc/motd"
    chmod 0600 "$st/etc/motd"
    chown 1000:1000 "$st/etc/motd"
    mkdir "$st/srv"
    chmod 0750 "$st/srv"
    chown 1234:5678 "$st/srv"
    touch -d '2001-02-03 04:05:06.123456789 UTC' "$st/srv"

    # A file replaced by a directory, an empty directory replaced by a symlink.
    mkdir "$st/etc/issue"
    echo "now a directory" >"$st/etc/issue/README"
    ln -s /opt "$st/var/opt"

    local fx=$st/opt/fixture
    mkdir -p "$fx"
    setfattr -n user.fukastor.dir -v "directory xattr" "$fx"

    # Hardlinks inside the layer.
    echo "two names, one inode" >"$fx/hardlink-a"
    ln "$fx/hardlink-a" "$fx/hardlink-b"
    # A hardlink to a file of layer 1: usr/bin/dpkg is staged (so that tar writes
    # the link entry) and deleted from the archive below.
    cp -a "$base/usr/bin/dpkg" "$st/usr/bin/dpkg"
    ln "$st/usr/bin/dpkg" "$fx/hardlink-to-lower-dpkg"

    # Special files and mode bits.
    mkfifo -m 0640 "$fx/fifo"
    mknod -m 0620 "$fx/chardev" c 10 229
    mknod -m 0660 "$fx/blockdev" b 7 200
    install -m 4755 "$base/usr/bin/true" "$fx/setuid-true"
    install -m 2755 -g 42 "$base/usr/bin/true" "$fx/setgid-true"
    mkdir -m 1777 "$fx/sticky-dir"
    install -m 0755 -o 65534 -g 65534 /dev/null "$fx/owned-by-nobody"

    # xattrs: a file capability, user xattrs (one with a binary value).
    install -m 0755 "$base/usr/bin/true" "$fx/cap-net-raw"
    setcap cap_net_raw+ep "$fx/cap-net-raw"
    echo "user xattrs here" >"$fx/user-xattr"
    setfattr -n user.fukastor.text -v "hello world" "$fx/user-xattr"
    setfattr -n user.fukastor.binary -v 0x00ff10fe0a0d "$fx/user-xattr"

    # Names and targets that are not UTF-8 (Latin-1 "café").
    echo "latin-1 name" >"$fx/caf"$'\xe9'
    ln -s "caf"$'\xe9' "$fx/link-to-latin1"
    mkdir "$fx/dir-"$'\xff\xfe'
    echo inside >"$fx/dir-"$'\xff\xfe'"/file"

    # Long names: a path >100 bytes, a 255-byte name, a long symlink target,
    # a hardlink whose target name is long.
    local long
    long=$fx/long-path/$(printf 'a%.0s' {1..60})/$(printf 'b%.0s' {1..60})
    mkdir -p "$long"
    echo "long path" >"$long/file-with-a-rather-long-name.txt"
    echo "255" >"$long/$(printf 'c%.0s' {1..255})"
    ln -s "${long#"$st"}/file-with-a-rather-long-name.txt" "$fx/long-symlink"
    # (named to sort after long-path/, so that the link entry carries the long name)
    ln "$long/file-with-a-rather-long-name.txt" "$fx/zz-hardlink-to-long"

    # Contents: empty, sparse-ish (holes on disk, zeros in the tar: tar is run
    # without --sparse because Go tar writers never emit sparse entries either),
    # 3 MiB and 20 MiB of random data, and a duplicate of the 3 MiB one.
    : >"$fx/empty"
    truncate -s 16M "$fx/sparse"
    printf start | dd of="$fx/sparse" conv=notrunc status=none
    printf middle | dd of="$fx/sparse" bs=1 seek=$((8 << 20)) conv=notrunc status=none
    printf end | dd of="$fx/sparse" bs=1 seek=$(((16 << 20) - 3)) conv=notrunc status=none
    head -c 3M /dev/urandom >"$fx/random-3m"
    head -c 20M /dev/urandom >"$fx/random-20m"
    cp "$fx/random-3m" "$fx/random-3m-copy"
    touch -d '1999-12-31 23:59:59 UTC' "$fx/random-3m-copy"

    # Staged directories that exist in the base keep the base's metadata
    # (what a diff-based layer builder writes), except those changed on purpose.
    for d in etc etc/apt usr usr/share usr/share/doc usr/bin var opt; do
        chown --reference="$base/$d" "$st/$d"
        chmod --reference="$base/$d" "$st/$d"
        touch -h --reference="$base/$d" "$st/$d"
    done

    # The tar: usr/bin/dpkg first so that the other name becomes the link
    # entry, then every staged path in byte order.
    {
        printf 'usr/bin/dpkg\0'
        (cd "$st" && find . -mindepth 1 ! -path ./usr/bin/dpkg -printf '%P\0' | LC_ALL=C sort -z)
    } >"$S/mod-members"
    tar --create --file="$layer" --format=pax --xattrs --xattrs-include='*' --numeric-owner \
        --directory="$st" --no-recursion --null --verbatim-files-from --files-from="$S/mod-members"
    tar --delete --file="$layer" usr/bin/dpkg
    local listing
    listing=$(tar -tvf "$layer")
    grep -q 'opt/fixture/hardlink-to-lower-dpkg link to usr/bin/dpkg' <<<"$listing" ||
        die "the layer has no hardlink entry to usr/bin/dpkg"
    if tar -tf "$layer" | grep -x 'usr/bin/dpkg' >/dev/null; then die "usr/bin/dpkg is still in the layer"; fi

    umoci raw add-layer --image "$O:bookworm" --tag bookworm-mod \
        --history.created_by "fixtures.sh build_bookworm_mod" "$layer"
    say "    layer 2: $(wc -l <<<"$listing") entries, $(du -m "$layer" | cut -f1) MiB uncompressed"
    remove_tree "$st"
    rm -f "$layer" "$S/mod-members"
}

build_bookworm_python() {
    local b=$S/bookworm-python r
    umoci unpack --image "$O:bookworm" "$b" >/dev/null
    r=$b/rootfs
    cp /etc/resolv.conf "$r/etc/resolv.conf.fixtures" 2>/dev/null || true
    local had_resolv=0
    [[ -e $r/etc/resolv.conf || -L $r/etc/resolv.conf ]] && had_resolv=1 &&
        mv "$r/etc/resolv.conf" "$r/etc/resolv.conf.orig"
    mv "$r/etc/resolv.conf.fixtures" "$r/etc/resolv.conf"
    mount -t proc proc "$r/proc"
    local -a in_chroot=(chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8
        PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive)
    local rc=0
    quiet "${in_chroot[@]}" apt-get -o APT::Sandbox::User=root update &&
        quiet "${in_chroot[@]}" apt-get -o APT::Sandbox::User=root install -y --no-install-recommends python3 &&
        quiet "${in_chroot[@]}" apt-get clean || rc=$?
    umount "$r/proc"
    rm -rf "$r"/var/lib/apt/lists/*
    rm -f "$r/etc/resolv.conf"
    ((had_resolv)) && mv "$r/etc/resolv.conf.orig" "$r/etc/resolv.conf"
    ((rc == 0)) || die "apt-get install python3 failed in the chroot"
    [[ -x $r/usr/bin/python3 ]] || die "python3 missing after apt-get install"
    umoci repack --image "$O:bookworm-python" "$b"
    umoci config --image "$O:bookworm-python" --config.cmd /usr/bin/python3
    remove_tree "$b"
}

build_archives() {
    quiet skopeo copy "oci:$O:busybox" "oci-archive:$OUT/busybox.oci.tar:busybox"
    quiet skopeo copy "oci:$O:busybox" "docker-archive:$OUT/busybox.docker.tar:busybox:latest"
    quiet skopeo copy "oci:$O:bookworm-mod" "docker-archive:$OUT/bookworm-mod.docker.tar:bookworm-mod:latest"
}

write_manifest() {
    local t d
    {
        echo "$STAMP_TEXT, built $(date -u +%FT%TZ) on $(uname -r)"
        echo
        for t in $(jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"]' "$O/index.json"); do
            d=$(manifest_of "$O" "$t")
            echo "oci:$t  manifest sha256:$d"
            jq -r '.layers[] | "  \(.mediaType)  \(.digest)  \(.size) bytes"' "$O/blobs/sha256/$d"
        done
        echo
        (cd "$OUT" && ls -l -- *.tar)
    } >"$OUT/MANIFEST.txt"
}

# --- main ---------------------------------------------------------------------

main() {
    check_tools
    mkdir -p "$(dirname "$F")"

    # One builder at a time; a second caller waits, then finds the stamp.
    exec 9>"$F.lock"
    flock 9
    if [[ ${FUKASTOR_FIXTURES_FORCE:-0} != 1 ]] && fixtures_up_to_date; then
        say "up to date: $F (built by another process)"
        return 0
    fi

    # Leftovers of interrupted builds (we hold the lock, so nobody owns them).
    local old
    for old in "$F".tmp.*; do
        [[ -d $old ]] && say "removing leftover $old" && remove_tree "$old"
    done

    W=$(mktemp -d "$F.tmp.XXXXXX")
    trap 'remove_tree "$W"' EXIT
    trap 'exit 130' INT TERM
    OUT=$W/out O=$W/out/oci S=$W/scratch
    mkdir -p "$OUT" "$S"
    : >"$LOG"
    say "building $STAMP_TEXT in $W (verbose log: $LOG)"

    local t0
    t0=$(now_us)
    umoci init --layout "$O"
    step "busybox" build_busybox
    step "busybox-zstd/uncompressed" build_busybox_variants
    step "bookworm (debootstrap)" build_bookworm
    step "bookworm-mod" build_bookworm_mod
    step "bookworm-python" build_bookworm_python
    step "archives (skopeo)" build_archives
    remove_tree "$S"
    write_manifest
    echo "$STAMP_TEXT" >"$OUT/STAMP"

    # Publish: move the old tree aside, rename the new one in, drop the old.
    if [[ -e $F ]]; then
        mv "$F" "$W/previous"
    fi
    mv "$OUT" "$F"

    say "built $F in $(fmt_secs $(($(now_us) - t0))):"
    printf '    %s\n' "${TIMINGS[@]}"
    sed 's/^/    /' "$F/MANIFEST.txt"
    du -sh "$F" | sed 's/^/    total /'
}

main "$@"
