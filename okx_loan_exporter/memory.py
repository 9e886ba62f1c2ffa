"""Process-wide memory settings: large scrape buffers out of glibc's heap, long-lived objects out
of the cyclic garbage collector's full passes.

A scrape of 1,000 accounts builds a body of about 5 MB (and its gzip). glibc serves allocations
that large with ``mmap`` and unmaps them when freed, but by default it then raises its mmap
threshold to the size just freed (up to 32 MiB): the next bodies come from the heap instead,
whose freed pages it keeps. Twelve uncompressed scrapes of 1,000 accounts grew RSS by 10 MiB
that way, for good. Setting the threshold explicitly turns that adjustment off. Nothing is done
on a C library without ``mallopt`` (musl, macOS): there is no such heap to tune.

The exporter's own objects for 1,000 accounts (caches, counters, pacers, HTTP clients: about
130,000 that the garbage collector tracks) live as long as the configuration does, yet each full
collection walked them all: 50-75 ms with every thread stopped, now and then in the middle of a
scrape. :func:`freeze_long_lived_objects` moves them to the permanent generation once they are
built (``gc.freeze``, as CPython's documentation suggests for this), so that full collections
walk only what came since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def freeze_long_lived_objects() -> int:
    """Leave the objects alive now out of later full collections; how many are left out.

    Call it once the configuration is in force: at start and after each reload. What the previous
    call left out is first handed back and collected, so that the objects of accounts a reload
    dropped are freed even when they refer to one another.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d long-lived objects left out of full garbage collections", frozen)
    return frozen
