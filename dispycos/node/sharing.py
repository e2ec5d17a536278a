"""
Keeping a process's pages shared with the children it forks (SPEC 6.6).

After C{os.fork()} a page stays shared until either side writes to it. What
Python writes without being asked is what this module keeps away from the
pages the fork copied: the cyclic collector's bookkeeping (L{gc.freeze}),
and new small objects, which CPython's allocator (obmalloc) places first in
the free slots of pools already in use, i.e. inside the old, shared pages.
L{prepare_fork} fills those slots beforehand (the fillers stay, shared and
never touched), so what a child allocates goes to pages of its own and the
old pages stay shared; it also hands the C heap's free pages back to the
system, so no child inherits them.

Measured with an idle node and two servers after one computation: 34.3 MiB
USS in total without this (and without psutil preloaded), 31.6 with both
(and 30.0 once the node's first import of Twisted left C{http.cookiejar}
unloaded and servers started their worker threads on demand).
"""

import gc
import os
import sys
import tempfile

from dispycos.server.heap import Heap

#: The filler objects (never used: they only occupy slots in shared pools).
_fillers = []
#: A C{bytes} object's size is this plus its length (CPython's PyBytesObject).
_BYTES_HEADER = sys.getsizeof(b"")


def pool_vacancies():
    """
    {block size: free blocks} of CPython's small-object allocator, read from
    C{sys._debugmallocstats()} (its table of size classes; it writes to the
    C-level stderr, which is redirected into a temporary file for the read).
    {} where that function is missing or its table cannot be read.
    """
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as f:
            os.dup2(f.fileno(), 2)
            try:
                stats()
            finally:
                os.dup2(saved, 2)
            f.seek(0)
            text = f.read().decode("ascii", "replace")
    finally:
        os.close(saved)
    vacancies = {}
    for line in text.splitlines():
        # "class   size   num pools   blocks in use  avail blocks": five integers
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields):
            vacancies[int(fields[1])] = int(fields[4])
    return vacancies


def fill_pools():
    """Occupy the free blocks of the pools in use (sizes a bytes object can have); returns how many."""
    made = 0
    for size, free in sorted(pool_vacancies().items()):
        length = size - _BYTES_HEADER
        if length < 2 or free <= 0:  # b"" and one-byte values are shared singletons
            continue
        _fillers.extend(bytes(length) for _ in range(free))
        made += free
    return made


def trim_heap():
    """Return the C heap's free pages to the system (glibc's C{malloc_trim}; nothing elsewhere)."""
    Heap().trim()


def prepare_fork():
    """
    Right before C{os.fork()}: fill the pools, trim the heap, freeze the
    collector. No collection first (as C{gc.freeze}'s documentation has it):
    after the imports a full one costs the node's start 25-70 ms here to free
    a few hundred objects, which stay instead, frozen and shared.
    """
    fill_pools()
    trim_heap()
    gc.freeze()
