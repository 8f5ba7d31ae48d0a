"""Giving the allocator's freed memory back to the system after the engine's bulk work.

Opening a qdrant-edge shard replays its write-ahead log (up to about 100 MB of recent writes, kept however
large the collection is): decoding it allocates several hundred megabytes, all freed when the shard is open.
glibc keeps freed memory that lies between live allocations, so without a trim the process holds it for
good: 600 MB for any late-interaction collection, more than its whole index at a few thousand pages
(docs/documents.md). ``malloc_trim`` returns those pages; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    try:  # the process's own symbols, libc's among them (no library search: that would run ldconfig)
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim(0)``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
