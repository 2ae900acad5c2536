"""The C allocator of the long-running processes (scanner/base/allocator.py), in fresh interpreters."""
from __future__ import annotations

import platform

import pytest
from support.truststate import run_python

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc_trim and /proc are Linux-only")

_FREED_BUT_HELD = """
import sys
from scanner.base import allocator
def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
blocks = [bytearray(3000) for _ in range(10_000)]  # 30 MB in blocks the heap serves (below mmap's threshold)
keep = blocks[9::10]  # every tenth stays, the last one too: the heap cannot simply shrink from its top
del blocks
held = rss()
print(allocator.trim(), held - rss())
"""


def test_trim_gives_the_freed_pages_in_the_middle_of_the_heap_back():
    out = run_python(_FREED_BUT_HELD)
    assert out.returncode == 0, out.stderr
    done, given_back_kb = out.stdout.split()
    assert done == "True" and int(given_back_kb) > 15_000
