# -*- test-case-name: tests.unit.test_heap -*-
"""
A server's C heap: large blocks are kept for reuse while it works, and
given back to the system once it is idle.

A task's large argument arrives as pieces read from the socket and becomes
one C{bytes} (or array) when it is unpickled; its result may be as large.
glibc's malloc serves each block over its mmap threshold (128 KiB at
first, moving with use up to 32 MiB) with a fresh C{mmap} and unmaps it
when it is freed, so every large value costs a page fault per 4 KiB page,
again for every task: on a virtual machine that is
three quarters of the time a 64 MiB argument takes (34 ms of page faults
for a 5 ms copy, measured here). With L{Heap.keep_large_blocks} the blocks
come from the heap and stay there when freed, for the next task to reuse;
L{Heap.release_if_idle}, called when the server has no task, hands what is
free back to the system (C{malloc_trim}), so an idle server holds no more
than before.

Everything here is best effort: without glibc (musl, macOS) it does
nothing and the server behaves as any process does.
"""

import ctypes

#: mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap rather than from their own mmap.
LARGE_BLOCK = 1 << 30
#: An idle server gives its free heap memory back when it holds at least this much.
RELEASE_AT = 128 << 10


class _MallInfo2(ctypes.Structure):
    """glibc's C{struct mallinfo2} (2.33 and later)."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _glibc():
    """The C library when it is glibc (it has C{malloc_trim}), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if getattr(libc, "malloc_trim", None) is None or getattr(libc, "mallopt", None) is None:
        return None
    return libc


class Heap:
    """
    The malloc policy of one server process.

    @param libc: the C library to call (glibc's functions C{mallopt},
        C{malloc_trim}, optionally C{mallinfo2}); by default this process's
        when it is glibc; with C{False} (or without glibc) nothing is done.
    """

    def __init__(self, libc=None):
        self.libc = (_glibc() if libc is None else libc) or None
        self.keeping = False
        self.releases = 0
        info = getattr(self.libc, "mallinfo2", None)
        if info is not None:
            info.restype = _MallInfo2
        self._info = info

    def keep_large_blocks(self):
        """Serve large blocks from the heap and keep them when freed; True when malloc took it."""
        if self.libc is None:
            return False
        self.keeping = bool(self.libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)) and bool(
            self.libc.mallopt(M_TRIM_THRESHOLD, LARGE_BLOCK))
        return self.keeping

    def free_bytes(self):
        """Bytes malloc holds free (C{mallinfo2}'s C{fordblks}), or None when it cannot tell."""
        if self._info is None:
            return None
        return self._info().fordblks

    def release_if_idle(self):
        """
        The server has no task: give free heap memory back to the system
        (when there is at least L{RELEASE_AT} of it, or when malloc cannot
        tell how much there is). True when it released.
        """
        if not self.keeping:
            return False
        free = self.free_bytes()
        if free is not None and free < RELEASE_AT:
            return False
        self.trim()
        self.releases += 1
        return True

    def trim(self):
        """Hand the heap's free pages back to the system now (C{malloc_trim}); False without glibc."""
        if self.libc is None:
            return False
        self.libc.malloc_trim(0)
        return True
