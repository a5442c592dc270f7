#!/usr/bin/env bash
# The runner demo: builds layerfs, makes a busybox image from the host's
# static busybox (no network), imports it into a scratch store and runs a
# command in it as an ordinary user (the current one, or $LAYERFS_TEST_USER
# when run as root), then shows a container whose changes survive `start`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/layerfs
work=$(mktemp -d /var/tmp/layerfs-demo-run.XXXXXX)
chmod 755 "$work"
as=()
if [ "$(id -u)" = 0 ]; then
    user=${LAYERFS_TEST_USER:-tester}
    chown "$user" "$work"
    as=(setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups)
fi
lfs() { "${as[@]}" "$bin" --root "$work/store" "$@"; }
cleanup() {
    lfs rm -f demo-box >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

scripts/busybox-image.sh "$work/busybox.tar"
chmod 644 "$work/busybox.tar"
echo "== layerfs import busybox.tar demo"
lfs import "$work/busybox.tar" demo
echo "== layerfs run --rm demo sh -c 'echo hello; id; ls /'   (as $("${as[@]}" id -un))"
lfs run --rm demo sh -c 'echo hello; id; ls /'
echo "== exit status passes through: sh -c 'exit 3'"
lfs run --rm demo sh -c 'exit 3' || echo "exit status $?"
echo "== a named container keeps its changes across start"
lfs run --name demo-box demo sh -c 'echo run >> /runs; wc -l < /runs'
lfs start -a demo-box
lfs ps -a
lfs rm demo-box
