"""
A server keeps the memory of large values for the next task and gives it
back once it is idle (L{dispycos.server.heap}): a real node with one server,
tasks with a 64 MiB argument, the server's page faults and RSS read from
/proc. Linux with glibc only.
"""

import sys
import time

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor, task

from dispycos.server import heap

from .conftest import Session

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._glibc() is None,
                                reason="glibc on Linux only")


def faults_so_far(data):
    """The server's minor page faults so far (its argument is only there to be received)."""
    import os

    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return os.getpid(), int(fields[7]), len(data)


@pytest_twisted.ensureDeferred
async def test_large_arguments_reuse_memory_and_an_idle_server_releases_it(fresh_node):
    one_server_node = fresh_node(cpus=1)
    size = 64 << 20
    data = b"\x5a" * size
    pages = size // 4096
    async with Session(one_server_node, [faults_so_far]) as comp:
        seen = [await comp.run_result(faults_so_far, data) for _ in range(4)]
        pids = {pid for pid, _, _ in seen}
        assert len(pids) == 1 and all(n == size for _, _, n in seen)
        # Each task after the first received and unpickled 64 MiB: as a
        # fresh mapping that is a fault per page, twice (pieces, then bytes).
        steps = [b[1] - a[1] for a, b in zip(seen, seen[1:])]
        assert min(steps) < pages // 4, (steps, pages)
        server = psutil.Process(pids.pop())
        held = server.memory_info().rss
        assert held >= size, held
        # Idle, the server gives it back within a few of its 1 s busy reports.
        deadline = time.monotonic() + 20
        while server.memory_info().rss > held - size:
            assert time.monotonic() < deadline, "server RSS still %d (held %d)" % (server.memory_info().rss, held)
            await task.deferLater(reactor, 0.2, lambda: None)
        # and still works afterwards
        assert (await comp.run_result(faults_so_far, b"x"))[2] == 1
