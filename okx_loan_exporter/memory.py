"""Keeps the large, short-lived buffers of a scrape out of glibc's heap, so that RSS goes back down.

A scrape of 1,000 accounts builds a body of about 5 MB (and its gzip). glibc serves allocations
that large with ``mmap`` and unmaps them when freed, but by default it then raises its mmap
threshold to the size just freed (up to 32 MiB): the next bodies come from the heap instead,
whose freed pages it keeps. Twelve uncompressed scrapes of 1,000 accounts grew RSS by 10 MiB
that way, for good. Setting the threshold explicitly turns that adjustment off. Nothing is done
on a C library without ``mallopt`` (musl, macOS): there is no such heap to tune.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the mmap threshold (malloc.h)."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own starting value: allocations from 128 KiB on are mapped, and unmapped when freed."""


def keep_large_buffers_out_of_the_heap(library: str | None = None) -> bool:
    """Fix glibc's mmap threshold at 128 KiB; True when the C library took it."""
    name = library if library is not None else ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    taken: bool = int(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) == 1
    log.debug("glibc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD_BYTES, taken)
    return taken
