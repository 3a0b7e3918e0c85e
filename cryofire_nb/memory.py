"""Returning freed heap memory to the system during long passes over a stack.

A pass over many batches allocates and frees large temporaries (a batch's images, its
Hartley values, scores) between small results that live on (each batch's poses). glibc's
allocator serves the large blocks from its heap once it has freed a few (its mmap
threshold rises to their size), and the small survivors then pin the freed pages: the
resident memory of a process grows with the number of batches, not with their size
(measured: an encoder pass over 400,000 particles of 64 px peaked at 9.8 GB of resident
memory; 20,000 of them grew it from 0.33 to 0.96 GB, against a flat 0.3 GB with the freed
pages returned every few batches). :func:`release` asks the allocator to return them
(``malloc_trim``), at most every ``INTERVAL_S`` seconds, so that its cost (a few ms) stays
negligible; it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

INTERVAL_S = 1.0

_trim = None
_last = 0.0
try:  # glibc only; other C libraries return freed memory differently
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = getattr(_libc, "malloc_trim", None)
except OSError:
    _trim = None


def release(force: bool = False) -> None:
    """Return the heap's free pages to the system (at most every ``INTERVAL_S`` seconds
    unless ``force``)."""
    global _last
    if _trim is None:
        return
    now = time.monotonic()
    if force or now - _last >= INTERVAL_S:
        _trim(0)
        _last = now
