"""Keep freed memory in the process for reuse: the ``lipgraph`` command's memory settings (Linux, glibc).

The conv certificates allocate and free many arrays of 1 to 60 MiB (a stack of Gram matrices per chunk of
frequencies, its factor, the moduli of the factor, ...). By default glibc serves large requests with ``mmap``
and gives the top of the heap back to the OS once 128 KiB of it are free (adapting both thresholds only
gradually), and numpy asks the kernel for transparent huge pages on large arrays; each page given back is
faulted in again, zero-filled, by the next array, and a huge page costs 512 small pages' zeroing each time.
On a CIFAR ResNet-18 ``lipgraph bound`` spent 0.4-0.5 s of 2.3 s CPU in the kernel doing that (one BLAS
thread, one process per run: 313,000 page faults with huge pages off, 97,000 with them on); with ``mmap``
kept for requests above 32 MiB, the heap trimmed only above 1 GiB free, and numpy's huge-page advice off,
0.15 s (91,000 faults). Nothing the analysis computes changes, only where its memory comes from; the peak
(the largest working set) is the same, the process simply does not give memory back between two arrays.

Only the ``lipgraph bound`` command (``lipgraph.cli.run``) does this: a library should not change a host
program's allocator, and ``certify`` streams data larger than memory, where memory handed back between batches
matters more than the faults saved (its bound runs beside inference anyway).
It is skipped where the user tunes glibc's allocator through its environment variables (theirs win), on
other platforms and C libraries, and with ``LIPGRAPH_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit
TRIM_THRESHOLD = 2**30
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Apply the settings of the module docstring; True when glibc accepted them."""
    if os.environ.get("LIPGRAPH_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
        return False
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:  # the user's choice wins here too
        _numpy_huge_pages(False)
    return True


def _numpy_huge_pages(enabled: bool) -> None:
    """numpy's advice to the kernel to back large arrays with huge pages (its NUMPY_MADVISE_HUGEPAGE, read
    only when numpy is imported, which the command has done by now)."""
    import numpy as np

    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(enabled)
