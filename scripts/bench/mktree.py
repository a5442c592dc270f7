#!/usr/bin/env python3
"""Builds a lower layer of many empty files for the daemon-memory walk.

Usage: mktree.py DIR [--files N] [--per-dir M]

DIR/tree/dNNNN/fNNNNNN: N empty files (default 1,000,000), M per directory
(default 1,000). A stamp file records N and M: an existing tree with the same
shape is reused, a different one is rebuilt. Building 1,000,000 files takes
about a minute on ext4.
"""

import argparse
import os
import shutil
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--per-dir", type=int, default=1_000)
    a = ap.parse_args()
    if a.files < 1 or a.per_dir < 1:
        ap.error("--files and --per-dir must be positive")
    stamp = os.path.join(a.dir, "stamp")
    want = f"files={a.files} per_dir={a.per_dir}\n"
    try:
        with open(stamp) as f:
            if f.read() == want:
                print(f"mktree: reusing {a.dir}", file=sys.stderr)
                return 0
    except FileNotFoundError:
        pass
    tree = os.path.join(a.dir, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    if os.path.exists(stamp):
        os.unlink(stamp)
    os.makedirs(tree)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = 0
    d = 0
    while made < a.files:
        dpath = os.path.join(tree, f"d{d:04d}")
        os.mkdir(dpath)
        dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(min(a.per_dir, a.files - made)):
                os.close(os.open(f"f{made:07d}", flags, 0o644, dir_fd=dfd))
                made += 1
        finally:
            os.close(dfd)
        d += 1
    with open(stamp, "w") as f:
        f.write(want)
    print(f"mktree: {made} files in {d} directories under {tree}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
