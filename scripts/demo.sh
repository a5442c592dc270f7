#!/usr/bin/env bash
# Builds layerfs, makes a small three-layer stack (a base, an update that
# deletes and replaces things with whiteouts and an opaque directory, an app
# layer), mounts it with layerfs next to a writable upper layer, shows the
# merged view and what a change does to the upper layer, and unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/layerfs
demo=$(mktemp -d /tmp/layerfs-demo.XXXXXX)
mnt=$demo/merged
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
    rm -rf "$demo"
}
trap cleanup EXIT

mkdir -p "$demo"/{base,update,app,upper,work,merged}
# base: a tiny root filesystem
mkdir -p "$demo"/base/{etc,bin,usr/share/doc/old,var/cache}
echo "base 1.0" >"$demo"/base/etc/os-release
echo "root:x:0:0:root:/root:/bin/sh" >"$demo"/base/etc/passwd
printf '#!/bin/sh\necho hello from the base layer\n' >"$demo"/base/bin/hello
chmod 755 "$demo"/base/bin/hello
echo "stale" >"$demo"/base/var/cache/big.db
echo "old docs" >"$demo"/base/usr/share/doc/old/README
# update: replaces os-release, deletes the cache db (OCI whiteout file) and
# makes /usr/share/doc opaque (only its own content shows)
mkdir -p "$demo"/update/{etc,var/cache,usr/share/doc}
echo "base 1.1" >"$demo"/update/etc/os-release
touch "$demo"/update/var/cache/.wh.big.db
touch "$demo"/update/usr/share/doc/.wh..wh..opq
echo "new docs" >"$demo"/update/usr/share/doc/README
# app: the application
mkdir -p "$demo"/app/app
echo 'print("hello from the app layer")' >"$demo"/app/app/main.py

echo "== layers (top first): app, update, base"
"$bin" -o "lowerdir=$demo/app:$demo/update:$demo/base,upperdir=$demo/upper,workdir=$demo/work" "$mnt"
echo "== merged view"
(cd "$mnt" && find . | sort)
echo "== /etc/os-release comes from the update layer:"
cat "$mnt"/etc/os-release
echo "== /var/cache/big.db is whited out:"
ls -la "$mnt"/var/cache
echo "== /usr/share/doc is opaque in the update layer:"
ls "$mnt"/usr/share/doc
echo "edited" >>"$mnt"/etc/passwd
rm "$mnt"/bin/hello
rm -r "$mnt"/app
mkdir "$mnt"/app
echo "== after editing /etc/passwd (copy-up), deleting /bin/hello (whiteout) and"
echo "   replacing /app with a new directory (opaque), the upper layer holds:"
(cd "$demo"/upper && find . -printf '%y %p\n' | sort)
getfattr -d -m 'overlay' "$demo"/upper/app 2>/dev/null | grep -v '^#' || true
umount "$mnt"
echo "== unmounted; lower layers were never modified:"
cat "$demo"/base/etc/passwd
