#!/usr/bin/env bash
# Writes a one-layer busybox root filesystem as a tar (for `layerfs import`):
# the host's static busybox (Debian: busybox-static) with a link per applet,
# /etc/passwd and /etc/group with root and an unprivileged user, and the
# usual empty directories. No network needed.
#
# Usage: scripts/busybox-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
bb=$(command -v busybox || true)
if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q 'statically linked'; then
    bb=/bin/busybox
fi
[ -x "$bb" ] || { echo "busybox-image.sh: no static busybox (apt-get install busybox-static)" >&2; exit 1; }
dir=$(mktemp -d /tmp/layerfs-busybox.XXXXXX)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
mkdir -p "$dir"/{bin,etc,proc,sys,dev,tmp,root,home/app,var,run}
chmod 1777 "$dir/tmp"
cp "$bb" "$dir/bin/busybox"
for a in $("$dir/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$dir/bin/$a"
done
cat >"$dir/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
P
cat >"$dir/etc/group" <<'G'
root:x:0:
wheel:x:10:app
app:x:1000:
nogroup:x:65534:
G
tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$out" .
