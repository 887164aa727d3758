#!/usr/bin/env python3
"""The C++ compiler of the test suite: g++, remembering every shared library it builds.

Every test process starts with an empty torch cache dir, as a fresh machine does, so each one
compiles torch's vector-ISA probes and its kernels again: most of a test's time on a 2-core
machine. conftest.py points torch at this script (CXX). A build of a shared library whose
command, source files and included headers are byte for byte those of an earlier build in the
same test run gets that build's output instead of running g++ again. torch still runs every
step of its compile; only g++'s work is shared. Anything else (--version, preprocessing) runs
g++ as is.

The memo lives in $MEGACACHE_TEST_COMPILE_MEMO, one test run's temporary dir.
"""

import hashlib
import os
import subprocess
import sys
import tempfile

COMPILER = os.environ.get("MEGACACHE_TEST_REAL_CXX", "g++")


def memo_key(args):
    """A hash of the command, with the output named by its file name only (each test's cache
    dir differs), and of the bytes of every file the command names."""
    digest = hashlib.sha256(COMPILER.encode())
    output = args[args.index("-o") + 1]
    for arg in args:
        if arg == output:
            digest.update(b"\0-o " + os.path.basename(arg).encode())
        elif os.path.isfile(arg):
            with open(arg, "rb") as f:
                digest.update(b"\0file " + hashlib.sha256(f.read()).digest())
        else:
            digest.update(b"\0" + arg.encode())
    return digest.hexdigest()


def main(args):
    memo = os.environ.get("MEGACACHE_TEST_COMPILE_MEMO")
    if not memo or "-shared" not in args or "-o" not in args or "-E" in args:
        os.execvp(COMPILER, [COMPILER, *args])
    output = args[args.index("-o") + 1]
    remembered = os.path.join(memo, memo_key(args) + ".so")
    if not os.path.exists(remembered):
        result = subprocess.run([COMPILER, *args])
        if result.returncode != 0:
            return result.returncode
        fd, temporary = tempfile.mkstemp(dir=memo)
        with os.fdopen(fd, "wb") as f, open(output, "rb") as built:
            f.write(built.read())
        os.replace(temporary, remembered)  # another process may have raced us: same bytes
        return 0
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(output) or ".")
    with os.fdopen(fd, "wb") as f, open(remembered, "rb") as built:
        f.write(built.read())
    os.chmod(temporary, 0o755)
    os.replace(temporary, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
