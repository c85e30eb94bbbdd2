#!/usr/bin/env bash
# Pull an image from an OCI layout, mount it read-only through the kernel,
# look inside, copy a file out, and check the store. Run as root.
#
#   examples/pull-and-mount.sh oci:/path/to/layout:tag
set -euo pipefail
src=${1:?usage: $0 oci:DIR:TAG}
fk=${FUKASTOR:-fukastor}
store=$(mktemp -d)
mnt=$(mktemp -d)
trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$store" "$mnt"' EXIT

"$fk" --store "$store" pull "$src" example
"$fk" --store "$store" images
"$fk" --store "$store" mount example "$mnt" --kernel
findmnt "$mnt"
ls "$mnt"
"$fk" --store "$store" restore example /etc "$store/etc-copy"
"$fk" umount "$mnt"
"$fk" --store "$store" df
"$fk" --store "$store" fsck
