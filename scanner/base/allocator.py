"""The C allocator of a long-running process: large blocks from the kernel, back to it when freed.

glibc serves a block of 128 KiB or more with its own mapping, but after the first such block is
freed it raises that threshold (up to 32 MiB) and serves later large blocks from its heap, which
it keeps after they are freed: each trust-bundle swap left tens of MB behind in the daemon and the
batch builder. A fixed threshold keeps blocks of 4 MiB and more (a bundle's buffers) mapped, so
freeing them returns the memory; smaller ones (a camera frame) are reused from the heap as before.
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE_BLOCK = 4 * 1024 * 1024


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Fix the allocator's mmap threshold at ``threshold`` bytes (glibc's mallopt); False where
    the C library has no mallopt (musl, macOS): the allocator is then left as it is."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1


def trim() -> bool:
    """Give the C allocator's free pages back to the system (glibc's malloc_trim, every arena):
    what a burst of work freed stops counting in the process's memory. False where there is none."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
