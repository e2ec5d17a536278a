"""
L{dispycos.server.heap}: a server's malloc policy (large blocks kept while
busy, released when idle), with a fake C library, and once with this
process's glibc in a child process (so this one's malloc stays as it is).
"""

import subprocess
import sys
import textwrap

import pytest
from twisted.internet import defer

from dispycos.server import heap
from dispycos.server.heap import Heap


class FakeLibc:
    """What L{Heap} calls of glibc, recorded; with C{free}, a C{mallinfo2} reporting that many free bytes."""

    def __init__(self, accept=True, free=None):
        self.calls = []
        self.accept = accept
        self.free = free
        if free is not None:
            def mallinfo2():
                info = heap._MallInfo2()
                info.fordblks = self.free
                return info

            self.mallinfo2 = mallinfo2

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1 if self.accept else 0

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_keep_large_blocks_raises_both_thresholds():
    libc = FakeLibc()
    h = Heap(libc)
    assert h.keep_large_blocks() is True
    assert libc.calls == [("mallopt", heap.M_MMAP_THRESHOLD, heap.LARGE_BLOCK),
                          ("mallopt", heap.M_TRIM_THRESHOLD, heap.LARGE_BLOCK)]
    assert h.keeping


def test_a_malloc_that_refuses_leaves_the_heap_alone():
    libc = FakeLibc(accept=False)
    h = Heap(libc)
    assert h.keep_large_blocks() is False
    assert h.release_if_idle() is False
    assert ("malloc_trim", 0) not in libc.calls


def test_release_when_idle_only_with_enough_free_memory():
    libc = FakeLibc(free=heap.RELEASE_AT - 1)
    h = Heap(libc)
    h.keep_large_blocks()
    assert h.release_if_idle() is False
    libc.free = heap.RELEASE_AT
    assert h.release_if_idle() is True
    assert libc.calls[-1] == ("malloc_trim", 0)
    assert h.releases == 1


def test_without_mallinfo2_an_idle_server_always_releases():
    libc = FakeLibc()
    h = Heap(libc)
    assert h.free_bytes() is None
    assert h.release_if_idle() is False  # not keeping: nothing to give back
    h.keep_large_blocks()
    assert h.release_if_idle() is True and h.release_if_idle() is True
    assert libc.calls.count(("malloc_trim", 0)) == 2


def test_no_libc_does_nothing():
    h = Heap(libc=False)
    assert h.libc is None
    assert h.keep_large_blocks() is False
    assert h.release_if_idle() is False
    assert h.free_bytes() is None


_CHILD = textwrap.dedent("""
    import resource, sys
    from dispycos.server.heap import Heap

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def faults_of(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        data = bytes(bytearray(n))  # two large blocks, written
        del data
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    h = Heap()
    keep = sys.argv[1] == "keep"
    if keep:
        assert h.keep_large_blocks()
    n = 64 << 20
    faults_of(n)
    second = faults_of(n)
    held = rss()
    released = h.release_if_idle()
    print(second, held, rss(), released)
""")


def _child(mode):
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    second, held, after, released = out.stdout.split()
    return int(second), int(held), int(after), released == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._glibc() is None, reason="glibc only")
def test_with_glibc_large_blocks_are_reused_then_released():
    pages = (64 << 20) // 4096
    # As any process: each 64 MiB block is a fresh mapping, a fault per page.
    second, _, _, released = _child("plain")
    assert second >= pages and not released
    # Kept: the second round reuses the first's memory; released, it is gone.
    second, held, after, released = _child("keep")
    assert second < pages // 4, second
    assert released and held - after >= 64 << 20, (held, after)


class _Counts:
    def as_list(self):
        return [0]


class _Runtime:
    def __init__(self):
        self.tasks, self.groups, self.counts = {}, {}, _Counts()


class _Heap:
    def __init__(self):
        self.idle_calls = 0

    def release_if_idle(self):
        self.idle_calls += 1
        return True


def test_the_servers_busy_report_releases_memory_only_when_it_has_no_task():
    from types import SimpleNamespace

    from dispycos.server.process import ServerControl

    server = SimpleNamespace(runtime=_Runtime(), was_busy=False, heap=_Heap())
    control = ServerControl(server)
    sent = []

    def call_remote(command, **kw):
        sent.append(command.commandName)
        return defer.succeed({})

    control.callRemote = call_remote
    server.runtime.tasks["t1"] = object()
    control._report_busy()
    assert server.heap.idle_calls == 0 and sent[0] == b"Busy"
    del server.runtime.tasks["t1"]
    control._report_busy()
    assert server.heap.idle_calls == 1


def test_trim_hands_free_pages_back_at_once_and_does_nothing_without_glibc():
    libc = FakeLibc()
    assert Heap(libc).trim() is True and libc.calls == [("malloc_trim", 0)]
    assert Heap(libc=False).trim() is False
