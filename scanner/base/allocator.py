"""The C allocator of a long-running process: large blocks from the kernel, back to it when freed.

glibc serves a block of 128 KiB or more with its own mapping, but after the first such block is
freed it raises that threshold (up to 32 MiB) and serves later large blocks from its heap, which
it keeps after they are freed: each trust-bundle swap left tens of MB behind in the daemon and the
batch builder. A fixed threshold keeps blocks of 4 MiB and more (a bundle's buffers) mapped, so
freeing them returns the memory; smaller ones (a camera frame) are reused from the heap as before.
glibc also gives threads heaps of their own (arenas, up to eight per core), each keeping what was
freed in it: in a daemon of a few threads whose work the GIL serialises, they share the main heap
(what that saves: docs/benchmarks.md, the soak).
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
LARGE_BLOCK = 4 * 1024 * 1024
ARENAS = 1  # every thread allocates from the main heap


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where the C library has none (musl, macOS) or refuses: the
    allocator is then left as it is."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(param, value) == 1


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Fix the allocator's mmap threshold at ``threshold`` bytes; False where it cannot be set."""
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def few_arenas(arenas: int = ARENAS) -> bool:
    """At most ``arenas`` heaps for all the threads (call before starting threads); False where it
    cannot be set."""
    return _mallopt(M_ARENA_MAX, arenas)
