#!/usr/bin/env python3
"""Build the deterministic three-layer stack used by scripts/bench.sh.

Layout written under OUT (layer dirs in overlay order, l1 = top):

  OUT/l3  base layer: a synthetic /usr (~33k files and symlinks in deep-ish
          dirs, varied sizes), a git repository (src/repo), a small C project
          (src/proj) and data/big.bin (1 GiB, for the read/append tests)
  OUT/l2  "update" layer: overrides of l3 files, new packages, whiteouts of
          files and whole dirs (char device 0/0), an opaque dir
  OUT/l1  top layer: overrides of l3 and l2 files, new files, whiteouts
          (also of l2 files), a re-created whited-out file and dir, an
          opaque dir
  OUT/copyup.list   2000 merged-view paths of lower regular files, for the
                    copy-up workload
  OUT/stack.json    counts and sizes

Opaque dirs carry both trusted.overlay.opaque=y (root: kernel overlayfs,
fuse-overlayfs) and user.overlay.opaque=y (what rootless kernel mounts with
-o userxattr and fuse-overlayfs in a user namespace read).

Everything is derived from --seed, so two builds give identical trees
(content, sizes, names, modes, mtimes).
"""

import argparse
import json
import os
import random
import stat
import subprocess
import sys

MiB = 1 << 20
FIXED_MTIME = 1_700_000_000  # all generated entries get this mtime


class Gen:
    def __init__(self, seed, scale):
        self.rng = random.Random(seed)
        self.scale = scale
        # A pool of random bytes; file contents are slices of it.
        self.pool = random.Random(seed ^ 0x5EED).randbytes(64 * MiB)
        self.files = 0
        self.dirs = 0
        self.links = 0
        self.bytes = 0

    def n(self, count):
        return max(1, int(count * self.scale))

    # --- names -----------------------------------------------------------
    SYL = ["ac", "al", "an", "ar", "ba", "be", "bi", "bo", "ca", "co", "cu",
           "da", "de", "di", "do", "el", "en", "er", "fa", "fi", "ga", "ge",
           "gi", "ha", "he", "in", "is", "ja", "ka", "ke", "la", "le", "li",
           "lo", "ma", "me", "mi", "mo", "na", "ne", "ni", "no", "ol", "on",
           "or", "pa", "pe", "pi", "po", "qu", "ra", "re", "ri", "ro", "ru",
           "sa", "se", "si", "so", "ta", "te", "ti", "to", "tu", "ul", "un",
           "ur", "va", "ve", "vi", "xa", "xe", "yo", "za", "ze", "zo"]

    def word(self, lo=2, hi=4):
        return "".join(self.rng.choice(self.SYL)
                       for _ in range(self.rng.randint(lo, hi)))

    def pkg(self):
        w = self.word(2, 4)
        r = self.rng.random()
        if r < 0.3:
            w = "lib" + w
        elif r < 0.45:
            w = w + "-" + self.word(1, 2)
        elif r < 0.55:
            w = "python3-" + w
        return w

    # --- sizes -----------------------------------------------------------
    def size(self, median, sigma=1.4, cap=4 * MiB):
        s = int(self.rng.lognormvariate(0, sigma) * median)
        return max(0, min(s, cap))

    def content(self, n):
        if n <= 0:
            return b""
        off = self.rng.randrange(0, len(self.pool) - n) if n < len(self.pool) else 0
        return self.pool[off:off + n]

    # --- fs ops ------------------------------------------------------------
    def mkdir(self, path):
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            self.dirs += 1

    def write(self, path, size, mode=0o644):
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            self.mkdir(d)
        # remove whatever was there (a whiteout, a symlink) first
        if os.path.lexists(path) and not os.path.isfile(path):
            os.unlink(path)
        with open(path, "wb") as f:
            f.write(self.content(size))
        os.chmod(path, mode)
        self.files += 1
        self.bytes += size

    def symlink(self, target, path):
        if os.path.lexists(path):
            return
        os.symlink(target, path)
        self.links += 1

    def whiteout(self, path):
        d = os.path.dirname(path)
        if not os.path.isdir(d):
            self.mkdir(d)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def opaque(self, path):
        self.mkdir(path)
        os.setxattr(path, "trusted.overlay.opaque", b"y")
        os.setxattr(path, "user.overlay.opaque", b"y")


# --------------------------------------------------------------------------
# base layer: a synthetic /usr
# --------------------------------------------------------------------------

def rand_tree(g, root, nfiles, max_depth, exts, median, fanout=(2, 5)):
    """Files spread over a random directory tree of at most max_depth levels."""
    dirs = [root]
    g.mkdir(root)
    frontier = [(root, 0)]
    while frontier and len(dirs) < max(2, nfiles // 6):
        d, depth = frontier.pop(g.rng.randrange(len(frontier)))
        if depth >= max_depth:
            continue
        for _ in range(g.rng.randint(*fanout)):
            sub = os.path.join(d, g.word(1, 3))
            if sub in dirs:
                continue
            g.mkdir(sub)
            dirs.append(sub)
            frontier.append((sub, depth + 1))
    out = []
    for _ in range(nfiles):
        d = g.rng.choice(dirs)
        p = os.path.join(d, g.word(1, 4) + g.rng.choice(exts))
        if os.path.lexists(p):
            continue
        g.write(p, g.size(median))
        out.append(p)
    return out


def build_base(g, L):
    usr = os.path.join(L, "usr")
    # bin, sbin
    for sub, cnt in (("bin", 1100), ("sbin", 250)):
        d = os.path.join(usr, sub)
        g.mkdir(d)
        for _ in range(g.n(cnt)):
            p = os.path.join(d, g.word(1, 4))
            if os.path.lexists(p):
                continue
            if g.rng.random() < 0.12:
                g.symlink(g.word(1, 3), p)  # often-dangling relative symlinks, like alternatives
            else:
                g.write(p, g.size(25_000, 1.3, 8 * MiB), 0o755)
    # shared libraries with soname symlinks
    lib = os.path.join(usr, "lib", "x86_64-linux-gnu")
    g.mkdir(lib)
    for _ in range(g.n(900)):
        base = "lib" + g.word(1, 3)
        real = "%s.so.%d.%d.%d" % (base, g.rng.randint(0, 9), g.rng.randint(0, 30), g.rng.randint(0, 9))
        p = os.path.join(lib, real)
        if os.path.lexists(p):
            continue
        g.write(p, g.size(50_000, 1.3, 8 * MiB))
        if g.rng.random() < 0.6:
            g.symlink(real, os.path.join(lib, base + ".so." + real.split(".so.")[1].split(".")[0]))
    for _ in range(g.n(60)):
        rand_tree(g, os.path.join(lib, g.word(2, 3)), g.rng.randint(5, 40), 3, [".so", ".conf", ""], 20_000)
    # python packages: deep trees with __pycache__
    dp = os.path.join(usr, "lib", "python3", "dist-packages")
    g.mkdir(dp)
    for _ in range(g.n(130)):
        top = os.path.join(dp, g.word(2, 3))
        files = rand_tree(g, top, g.rng.randint(5, 70), 4, [".py"], 6_000, (1, 4))
        for f in files[: len(files) // 2]:
            pc = os.path.join(os.path.dirname(f), "__pycache__",
                              os.path.basename(f)[:-3] + ".cpython-311.pyc")
            g.write(pc, g.size(5_000))
        dist = top + "-%d.%d.dist-info" % (g.rng.randint(0, 9), g.rng.randint(0, 20))
        for n in ("METADATA", "RECORD", "WHEEL", "top_level.txt"):
            g.write(os.path.join(dist, n), g.size(800))
    # node-style nesting (the deep part)
    nm = os.path.join(usr, "lib", "node_modules")
    g.mkdir(nm)

    def node_mod(d, depth):
        g.write(os.path.join(d, "package.json"), g.size(1_200))
        for _ in range(g.rng.randint(1, 6)):
            g.write(os.path.join(d, "lib", g.word(1, 3) + ".js"), g.size(4_000))
        if depth < 5 and g.rng.random() < 0.5:
            for _ in range(g.rng.randint(1, 3)):
                node_mod(os.path.join(d, "node_modules", g.word(1, 3)), depth + 1)

    for _ in range(g.n(80)):
        node_mod(os.path.join(nm, g.word(2, 3)), 0)
    # docs
    doc = os.path.join(usr, "share", "doc")
    for _ in range(g.n(1100)):
        d = os.path.join(doc, g.pkg())
        if os.path.isdir(d):
            continue
        g.write(os.path.join(d, "copyright"), g.size(3_000))
        g.write(os.path.join(d, "changelog.Debian.gz"), g.size(2_000))
        if g.rng.random() < 0.4:
            g.write(os.path.join(d, "README." + g.rng.choice(["md", "gz", "txt"])), g.size(5_000))
        if g.rng.random() < 0.15:
            for _ in range(g.rng.randint(2, 12)):
                g.write(os.path.join(d, "examples", g.word() + ".txt"), g.size(3_000))
    # man pages
    man = os.path.join(usr, "share", "man")
    for _ in range(g.n(3600)):
        sec = g.rng.randint(1, 8)
        lang = "" if g.rng.random() < 0.8 else g.rng.choice(["de", "fr", "ja", "pl", "ru"])
        d = os.path.join(man, lang, "man%d" % sec)
        g.write(os.path.join(d, "%s.%d.gz" % (g.word(1, 4), sec)), g.size(2_500, 1.0))
    # locales
    loc = os.path.join(usr, "share", "locale")
    langs = ["de", "fr", "es", "it", "ja", "ko", "zh_CN", "zh_TW", "ru", "pl", "pt", "pt_BR",
             "nl", "sv", "fi", "da", "nb", "cs", "sk", "hu", "ro", "tr", "el", "uk", "bg", "ca",
             "eu", "gl", "he", "ar", "fa", "hi", "id", "ms", "th", "vi", "lt", "lv", "et", "sl",
             "hr", "sr", "mk", "ga", "cy", "is", "af", "sq", "be", "ka"]
    domains = [g.word(2, 3) for _ in range(g.n(30))]
    for lang in langs:
        for dom in domains:
            if g.rng.random() < 0.7:
                g.write(os.path.join(loc, lang, "LC_MESSAGES", dom + ".mo"), g.size(15_000, 1.0))
    # headers
    inc = os.path.join(usr, "include")
    for _ in range(g.n(110)):
        rand_tree(g, os.path.join(inc, g.word(2, 3)), g.rng.randint(3, 45), 3, [".h", ".hpp"], 7_000, (1, 3))
    # icons: theme/size/category/name.png
    icons = os.path.join(usr, "share", "icons")
    sizes = ["16x16", "22x22", "24x24", "32x32", "48x48", "64x64", "128x128", "256x256", "scalable"]
    cats = ["actions", "apps", "categories", "devices", "emblems", "mimetypes", "places", "status"]
    for theme, cnt in (("hicolor", 900), ("Adwaita", 1800), ("breeze", 900)):
        names = [g.word(2, 4) for _ in range(g.n(cnt) // 6)]
        for s in sizes:
            for nm_ in names:
                if g.rng.random() < 0.7:
                    ext = ".svg" if s == "scalable" else ".png"
                    g.write(os.path.join(icons, theme, s, g.rng.choice(cats), nm_ + ext),
                            g.size(1_500 if s != "256x256" else 20_000, 1.0))
    # a few big files, like big libraries
    for _ in range(4):
        g.write(os.path.join(usr, "lib", "x86_64-linux-gnu", "libbig%s.so.1" % g.word(1, 2)),
                g.rng.randint(8, 16) * MiB)


def build_repo(g, L):
    """A git repository with a source-tree working copy (for git status)."""
    repo = os.path.join(L, "src", "repo")
    for top, cnt, exts, med in (("kernel", 1400, [".c", ".h"], 6_000),
                                ("tools", 500, [".c", ".h", ".py", ".sh"], 6_000),
                                ("docs", 600, [".rst", ".txt"], 5_000),
                                ("tests", 900, [".py", ".json"], 3_000),
                                ("web", 700, [".js", ".ts", ".css", ".html"], 4_000)):
        rand_tree(g, os.path.join(repo, top), g.n(cnt), 4, exts, med, (2, 5))
    g.write(os.path.join(repo, "README.md"), 4_000)
    env = dict(os.environ, GIT_AUTHOR_DATE="@%d +0000" % FIXED_MTIME,
               GIT_COMMITTER_DATE="@%d +0000" % FIXED_MTIME,
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost",
               GIT_CONFIG_NOSYSTEM="1", HOME="/nonexistent")

    def git(*args):
        subprocess.run(["git", "-C", repo, "-c", "init.defaultBranch=main",
                        "-c", "safe.directory=*", *args],
                       check=True, env=env, stdout=subprocess.DEVNULL)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "import")
    git("repack", "-adq")
    git("prune")
    return repo


def build_proj(g, L):
    """A small C project for `make -j2`."""
    proj = os.path.join(L, "src", "proj")
    g.mkdir(proj)
    n = 24
    for i in range(n):
        fns = []
        for j in range(20):
            a, b = g.rng.randint(1, 99), g.rng.randint(1, 99)
            fns.append("int f%d_%d(int x){int s=0;for(int i=0;i<x;i++){s+=(i*%d)^(s>>%d);}return s+%d;}"
                       % (i, j, a, b % 7 + 1, b))
        body = "#include \"proj.h\"\n" + "\n".join(fns) + "\n"
        body += "int mod%d(int x){return %s;}\n" % (i, "+".join("f%d_%d(x)" % (i, j) for j in range(20)))
        with open(os.path.join(proj, "m%02d.c" % i), "w") as f:
            f.write(body)
        g.files += 1
    with open(os.path.join(proj, "proj.h"), "w") as f:
        f.write("".join("int mod%d(int);\n" % i for i in range(n)))
    with open(os.path.join(proj, "main.c"), "w") as f:
        f.write('#include <stdio.h>\n#include "proj.h"\nint main(void){long s=0;\n%s'
                'printf("%%ld\\n",s);return 0;}\n' % "".join("s+=mod%d(%d);\n" % (i, i) for i in range(n)))
    objs = " ".join("m%02d.o" % i for i in range(n)) + " main.o"
    with open(os.path.join(proj, "Makefile"), "w") as f:
        f.write("CFLAGS=-O1\nOBJS=%s\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n"
                "%%.o: %%.c proj.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n" % objs)
    g.files += 3


def write_big(g, path, size):
    g.mkdir(os.path.dirname(path))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            off = g.rng.randrange(0, len(g.pool) - n)
            f.write(g.pool[off:off + n])
            left -= n
    g.files += 1
    g.bytes += size


# --------------------------------------------------------------------------
# upper layers
# --------------------------------------------------------------------------

def walk_files(root, skip_prefixes=()):
    """Regular files (relative paths), sorted, excluding skip_prefixes."""
    out = []
    for d, dns, fns in os.walk(root):
        dns.sort()
        rel_d = os.path.relpath(d, root)
        if rel_d != "." and any(rel_d == s or rel_d.startswith(s + "/") for s in skip_prefixes):
            dns[:] = []
            continue
        for fn in sorted(fns):
            p = os.path.join(d, fn)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out.append(os.path.relpath(p, root))
    return out


def walk_dirs(root, under):
    out = []
    for d, dns, _ in os.walk(os.path.join(root, under)):
        dns.sort()
        for dn in dns:
            out.append(os.path.relpath(os.path.join(d, dn), root))
    return out


def build_layer2(g, L3, L2):
    protected = ("src", "data", "usr/share/icons/Adwaita", "usr/share/locale/de")
    base_files = walk_files(L3, protected)
    g.rng.shuffle(base_files)
    overrides = base_files[: g.n(2500)]
    wh_files = base_files[g.n(2500): g.n(2500) + g.n(600)]
    for rel in overrides:
        g.write(os.path.join(L2, rel), g.size(6_000))
    for rel in wh_files:
        g.whiteout(os.path.join(L2, rel))
    # whole-directory whiteouts: a few doc packages
    doc_dirs = sorted(d for d in walk_dirs(L3, "usr/share/doc") if d.count("/") == 3)
    g.rng.shuffle(doc_dirs)
    # only dirs the overrides/whiteouts above left untouched in this layer
    wh_dirs = [d for d in doc_dirs if not os.path.lexists(os.path.join(L2, d))][:15]
    for d in wh_dirs:
        g.whiteout(os.path.join(L2, d))
    # new packages
    dp = "usr/lib/python3/dist-packages"
    for _ in range(g.n(40)):
        rand_tree(g, os.path.join(L2, dp, "new" + g.word(2, 3)), g.rng.randint(10, 60), 3, [".py"], 6_000, (1, 3))
    for _ in range(g.n(250)):
        d = os.path.join(L2, "usr/share/doc", "new" + g.pkg())
        g.write(os.path.join(d, "copyright"), g.size(3_000))
        g.write(os.path.join(d, "changelog.Debian.gz"), g.size(2_000))
    # opaque dir replacing a big subtree
    op = os.path.join(L2, "usr/share/icons/Adwaita")
    g.opaque(op)
    for _ in range(40):
        g.write(os.path.join(op, g.rng.choice(["16x16", "scalable"]), "apps", g.word() + ".svg"), g.size(1_500))
    g.write(os.path.join(op, "index.theme"), 2_000)
    return {"overrides": len(overrides), "whiteouts": len(wh_files), "dir_whiteouts": len(wh_dirs),
            "wh_file_list": wh_files, "wh_dir_list": wh_dirs}


def build_layer1(g, L3, L2, L1, l2info):
    protected = ("src", "data", "usr/share/icons/Adwaita", "usr/share/locale/de")
    wh2 = set(l2info["wh_file_list"])
    whd2 = l2info["wh_dir_list"]
    l3 = [f for f in walk_files(L3, protected)
          if f not in wh2 and not any(f.startswith(d + "/") for d in whd2)]
    l2 = [f for f in walk_files(L2, protected) if os.path.isfile(os.path.join(L2, f))]
    g.rng.shuffle(l3)
    g.rng.shuffle(l2)
    # overrides: half of files l2 already overrode or added, half plain l3 files
    ov = l2[: g.n(500)] + [f for f in l3[: g.n(700)] if f not in set(l2[: g.n(500)])][: g.n(500)]
    for rel in ov:
        g.write(os.path.join(L1, rel), g.size(6_000))
    taken = set(ov)
    wh = []
    for f in l2[g.n(500): g.n(500) + g.n(100)] + l3[g.n(700): g.n(700) + g.n(200)]:
        if f not in taken:
            taken.add(f)
            wh.append(f)
    for rel in wh:
        g.whiteout(os.path.join(L1, rel))
    # re-create a file whited out in l2 and a dir whited out in l2
    recreated = sorted(wh2)[:20]
    for rel in recreated:
        g.write(os.path.join(L1, rel), g.size(3_000))
    if whd2:
        g.write(os.path.join(L1, whd2[0], "copyright"), 1_000)
        g.write(os.path.join(L1, whd2[0], "NEWS"), 1_000)
    # new files
    for _ in range(g.n(30)):
        rand_tree(g, os.path.join(L1, "usr/lib/python3/dist-packages", "top" + g.word(2, 3)),
                  g.rng.randint(10, 60), 3, [".py"], 6_000, (1, 3))
    for _ in range(g.n(300)):
        d = os.path.join(L1, "usr/share/man/man1")
        g.write(os.path.join(d, "top%s.1.gz" % g.word()), g.size(2_500, 1.0))
    # opaque dir over a locale
    op = os.path.join(L1, "usr/share/locale/de")
    g.opaque(op)
    for dom in ("coreutils", "libc", "top"):
        g.write(os.path.join(op, "LC_MESSAGES", dom + ".mo"), g.size(15_000))
    return {"overrides": len(ov), "whiteouts": len(wh), "recreated": len(recreated) + (1 if whd2 else 0)}


def only_in_base(rel, uppers):
    """True if rel, a file of the base layer, is what the merged view shows."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        p = "/".join(parts[:i])
        for up in uppers:
            q = os.path.join(up, p)
            if not os.path.lexists(q):
                continue
            if i == len(parts) or not os.path.isdir(q) or os.path.islink(q):
                return False  # overridden or whited out, or an ancestor is
            try:
                if os.getxattr(q, "trusted.overlay.opaque") == b"y":
                    return False
            except OSError:
                pass
    return True


def pick_copyup(g, L3, uppers, n):
    """n small regular files that only the base layer has (and shows), for copy-up."""
    cand = [f for f in walk_files(L3, ("src", "data")) if only_in_base(f, uppers)]
    cand = [f for f in cand if os.path.getsize(os.path.join(L3, f)) < 64 * 1024]
    g.rng.shuffle(cand)
    return sorted(cand[:n])



def set_mtimes(root):
    for d, dns, fns in os.walk(root, topdown=False):
        for x in fns + dns:
            try:
                os.utime(os.path.join(d, x), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
            except OSError:
                pass
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20251123)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--big-mib", type=int, default=1024)
    a = ap.parse_args()
    os.umask(0o022)
    L1, L2, L3 = (os.path.join(a.out, x) for x in ("l1", "l2", "l3"))
    for d in (L1, L2, L3):
        if os.path.exists(d):
            sys.exit("%s exists; remove it first" % d)
        os.makedirs(d)
    g = Gen(a.seed, a.scale)
    build_base(g, L3)
    build_proj(g, L3)
    write_big(g, os.path.join(L3, "data", "big.bin"), a.big_mib * MiB)
    l2info = build_layer2(g, L3, L2)
    l1info = build_layer1(g, L3, L2, L1, l2info)
    # the repo is built last so layer contents above do not depend on git's output;
    # its files get fixed mtimes before the commit so the index matches.
    repo = build_repo(g, L3)
    cu = pick_copyup(g, L3, (L1, L2), 2000)
    with open(os.path.join(a.out, "copyup.list"), "w") as f:
        f.write("".join(p + "\n" for p in cu))
    for d in (L1, L2):
        set_mtimes(d)
    set_mtimes(os.path.join(L3, "usr"))
    set_mtimes(os.path.join(L3, "src", "proj"))
    info = {"seed": a.seed, "scale": a.scale, "files_written": g.files, "dirs": g.dirs,
            "symlinks": g.links, "bytes": g.bytes, "copyup": len(cu),
            "layer2": {k: v for k, v in l2info.items() if not k.endswith("_list")},
            "layer1": l1info, "repo": os.path.relpath(repo, L3)}
    with open(os.path.join(a.out, "stack.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
