"""Memory a run may use: what the machine has available, and giving freed memory back after a
segmentation, so a long session stays flat.

glibc's allocator keeps freed memory for reuse: after a large inference, the heap (and, since
glibc raises its mmap threshold after freeing a large mapped block, later large arrays too)
stays resident although nothing uses it. In Slicer or the web app, which run many segmentations
of different sizes in one process, RSS then ratchets up run after run (issue 16: 0.7 to 2.2 GB
over 200 Med-NCA runs). ``malloc_trim(0)`` returns the free memory at the end of a run; the
measurements behind this choice are in Testing/Benchmarks/mednca_speed.py (``--retention``)
and Testing/Benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim  # noqa: B018 (only glibc has it; musl and others raise AttributeError)
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def release_free_memory() -> bool:
    """Return the allocator's free memory to the system (glibc ``malloc_trim(0)``); whether it ran.

    A no-op (False) on other C libraries and systems, whose allocators need no such call or offer
    none. Takes a few milliseconds; call it after a segmentation, not inside one.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def available_memory_bytes() -> int | None:
    """Memory (bytes) the system can give a new allocation without swapping, or None where unknown.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate, page cache that can be
    dropped included); other systems: free physical pages (``os.sysconf``) where offered, which
    undercounts (no page cache); None otherwise, and callers then do not refuse anything.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    """1.2 GB, 350 MB: the precision a user needs to judge whether it fits."""
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB"
