"""
The per-task path: a task that ends at once reports its outcome once (the
status stream has each task created and finished exactly once), and servers
run under SCHED_BATCH unless the node says --sched_normal.
"""

import os

import pytest
import pytest_twisted

from dispycos import Status

from .conftest import NodeProcess, Session


def ends_at_once(n, task=None):
    return n * n
    yield  # noqa: unreachable - a generator function


def waits_first(n, task=None):
    yield task.sleep(0.05)
    return n + 1


def policy():
    import os

    return os.sched_getscheduler(0)


@pytest_twisted.ensureDeferred
async def test_outcomes_arrive_once(node):
    async with Session(node, [ends_at_once, waits_first]) as comp:
        # Through the API: the result, the status stream in order, nothing twice.
        seen = []
        comp.status_task = seen.append
        rtasks = [await comp.run(ends_at_once, i) for i in range(20)]
        assert [await t.result() for t in rtasks] == [i * i for i in range(20)]
        assert await comp.run_result(waits_first, 1) == 2
        kinds = [m.status for m in seen]
        assert kinds.count(Status.TaskCreated) == 21 and kinds.count(Status.TaskFinished) == 21
        for t in rtasks:
            created = [i for i, m in enumerate(seen) if getattr(m.info, "task", None) is t]
            assert [seen[i].status for i in created] == [Status.TaskCreated, Status.TaskFinished]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest_twisted.ensureDeferred
async def test_servers_run_as_batch_unless_told(node):
    async with Session(node, [policy]) as comp:
        assert await comp.run_result(policy) == os.SCHED_BATCH
    other = NodeProcess(cpus=1, args=["--sched_normal"])
    try:
        async with Session(other, [policy]) as comp:
            assert await comp.run_result(policy) == os.SCHED_OTHER
    finally:
        other.stop()
