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
    dropped included), and no more than a container's own limit allows (cgroup v2
    ``memory.max`` minus ``memory.current``; Docker and Kubernetes limits, which MemAvailable
    does not see). Other systems: free physical pages (``os.sysconf``) where offered, which
    undercounts (no page cache); None otherwise, and callers then do not refuse anything.
    """
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without a limit (or cgroups).

    cgroup v2: ``memory.max`` and ``memory.current`` of the process's group; cgroup v1 (still
    common in containers): ``memory/memory.limit_in_bytes`` and ``memory.usage_in_bytes``, where
    "no limit" is a number near 2**63.
    """
    group = "/"
    try:
        with open("/proc/self/cgroup") as cgroup:
            group = next((line.strip().split("::", 1)[1] for line in cgroup if line.startswith("0::")), "/")
    except OSError:
        pass
    for limit_name, usage_name, folder in (
            ("memory.max", "memory.current", os.path.join(root, group.lstrip("/"))),
            ("memory.limit_in_bytes", "memory.usage_in_bytes", os.path.join(root, "memory"))):
        try:
            with open(os.path.join(folder, limit_name)) as limit_file:
                limit = limit_file.read().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            with open(os.path.join(folder, usage_name)) as usage_file:
                return max(0, int(limit) - int(usage_file.read().strip()))
        except (OSError, ValueError):
            continue
    return None


def format_bytes(count: float) -> str:
    """1.2 GB, 350 MB: the precision a user needs to judge whether it fits."""
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB"
