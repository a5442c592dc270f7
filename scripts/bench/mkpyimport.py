#!/usr/bin/env python3
"""Add the Python import workload's package to a bench stack (idempotent).

Writes OUT/l3/usr/lib/python3/dist-packages/benchimp: 20 subpackages of 25
modules each (about 120 lines of classes and functions per module) plus
benchimp/all.py, which imports every module, each compiled to
__pycache__/*.pyc with unchecked-hash invalidation (so the bytecode is used
whatever the mtimes, as Debian's packaged bytecode is), and overrides one
subpackage's module in OUT/l1 (the top layer) to cross layers. Everything
is fixed text: two builds are identical. Run `python3 -B` against it (never
writes bytecode into the mount).
"""

import compileall
import os
import py_compile
import sys

FIXED_MTIME = 1_700_000_000
SUBPKGS = 20
MODULES = 25


def module_source(p, m):
    lines = ["# generated module %d.%d" % (p, m), "import sys", ""]
    if m > 0:
        lines.append("from . import mod%02d as _prev" % (m - 1))
    lines.append("CONST_%d_%d = %d" % (p, m, p * 1000 + m))
    for c in range(6):
        lines += [
            "",
            "class Thing%d:" % c,
            '    """A class with a few methods."""',
            "    def __init__(self, a=%d, b=%d):" % (c, m),
            "        self.a = a",
            "        self.b = b",
            "    def total(self):",
            "        return self.a + self.b + CONST_%d_%d" % (p, m),
            "    def describe(self):",
            "        return '%s(%d, %d)' % (type(self).__name__, self.a, self.b)",
            "    def scaled(self, k):",
            "        return [self.a * k, self.b * k, [i * k for i in range(%d)]]" % (c + 3),
        ]
    for f in range(8):
        lines += [
            "",
            "def func%d(x, y=%d):" % (f, f),
            "    if x > y:",
            "        return {'x': x, 'y': y, 'sum': x + y, 'tag': 'f%d_%d_%d'}" % (p, m, f),
            "    return tuple(range(y, x + %d))" % (f + 1),
        ]
    return "\n".join(lines) + "\n"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    out = sys.argv[1]
    base = os.path.join(out, "l3", "usr/lib/python3/dist-packages", "benchimp")
    if os.path.exists(os.path.join(base, "all.py")):
        return
    imports = []
    for p in range(SUBPKGS):
        pkg = os.path.join(base, "sub%02d" % p)
        write(os.path.join(pkg, "__init__.py"), "# subpackage %d\n" % p)
        for m in range(MODULES):
            write(os.path.join(pkg, "mod%02d.py" % m), module_source(p, m))
            imports.append("import benchimp.sub%02d.mod%02d" % (p, m))
    write(os.path.join(base, "__init__.py"), "# the import benchmark's package\n")
    write(os.path.join(base, "all.py"), "\n".join(imports) + "\nCOUNT = %d\n" % len(imports))
    unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH
    if not compileall.compile_dir(base, quiet=1, invalidation_mode=unchecked):
        sys.exit("compileall failed")
    # the top layer overrides one module (source and bytecode)
    top = os.path.join(out, "l1", "usr/lib/python3/dist-packages", "benchimp", "sub07")
    write(os.path.join(top, "mod03.py"), module_source(7, 3).replace("# generated", "# overridden"))
    compileall.compile_dir(top, quiet=1, invalidation_mode=unchecked)
    for root in (base, top):
        for d, dns, fns in os.walk(root, topdown=False):
            for x in fns + dns:
                os.utime(os.path.join(d, x), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
        os.utime(root, (FIXED_MTIME, FIXED_MTIME))


if __name__ == "__main__":
    main()
