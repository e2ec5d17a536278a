"""
The status stream: every event exactly once, in a sensible order, to a local
Task or a callable; node resources every pulse.
"""

from collections import Counter

import pytest_twisted

import dispycos
from dispycos import Computation, DispycosStatus, Scheduler, Status

from .test_core import wait_for


def work(n, task=None):
    yield task.sleep(0.01)
    if n == 3:
        raise ValueError("three")
    return n


def count(statuses):
    return Counter(s.status for s in statuses if isinstance(s, DispycosStatus))


@pytest_twisted.ensureDeferred
async def test_status_counts_for_n_tasks_to_a_callable(node):
    statuses = []
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([work], status_task=statuses.append, pulse_interval=1)
    try:
        await comp.schedule(timeout=30)
        tasks = [await comp.run(work, i) for i in range(10)]
        for t in tasks:
            try:
                await t.result()
            except dispycos.RemoteTaskError:
                pass
        await wait_for(lambda: any(isinstance(s, dispycos.DispycosNodeAvailInfo) for s in statuses), timeout=10)
    finally:
        await comp.close()
        await scheduler.close()
    c = count(statuses)
    assert c[Status.NodeDiscovered] == 1 and c[Status.NodeInitialized] == 1
    assert c[Status.ServerDiscovered] == 2 and c[Status.ServerInitialized] == 2
    assert c[Status.TaskCreated] == 10 and c[Status.TaskFinished] == 10
    assert c[Status.ServerClosed] == 2 and c[Status.NodeClosed] == 1
    assert c[Status.ComputationClosed] == 1
    assert statuses[-1].status == Status.ComputationClosed
    codes = [s.status for s in statuses if isinstance(s, DispycosStatus)]
    assert codes.index(Status.NodeDiscovered) < codes.index(Status.NodeInitialized) < codes.index(Status.ServerInitialized)
    assert codes.index(Status.ServerInitialized) < codes.index(Status.TaskCreated)
    finished = [s.info for s in statuses if isinstance(s, DispycosStatus) and s.status == Status.TaskFinished]
    failed = [i for i in finished if i.exception is not None]
    assert len(failed) == 1 and isinstance(failed[0].exception, dispycos.RemoteTaskError)
    assert failed[0].args == (3,)
    assert sorted(i.result for i in finished if i.exception is None) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert all(i.end_time >= i.start_time for i in finished)
    avail = [s for s in statuses if isinstance(s, dispycos.DispycosNodeAvailInfo)]
    assert avail[0].location == dispycos.Location.parse(node.location, 0)
    assert avail[0].memory > 0 and avail[0].disk > 0


@pytest_twisted.ensureDeferred
async def test_status_to_a_local_task(node):
    got = []

    def status_proc(task=None):
        while True:
            msg = yield task.receive()
            got.append(msg)
            if isinstance(msg, DispycosStatus) and msg.status == Status.ComputationClosed:
                return len(got)

    status_task = dispycos.Task(status_proc)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([work], status_task=status_task)
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_results(work, [0, 1, 2]) == [0, 1, 2]
    finally:
        await comp.close()
        await scheduler.close()
    n = await status_task.result(timeout=10)
    c = count(got)
    assert n == len(got) and c[Status.TaskFinished] == 3 and c[Status.ComputationClosed] == 1
