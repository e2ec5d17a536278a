"""
The task engine (issue 13, SPEC 6.1): creation is one-way and batched, run()
fires once the task is placed and sent, a server never runs task code before
taking in what waits for it, maps go in batches with bounded client memory.
Real node and server processes on 127.0.0.1.
"""

import os

import psutil
import pytest
import pytest_twisted

import dispycos

from .conftest import Session


# -- task functions (shipped by value) -------------------------------------------------


def cpu_gen(seconds, task=None):
    """CPU-bound for C{seconds} without yielding: a generator function."""
    import time

    start = time.time()
    while time.time() - start < seconds:
        pass
    return (start, time.time())
    yield  # noqa: unreachable - a generator function


async def cpu_coro(seconds):
    """The same as a coroutine function."""
    import time

    start = time.time()
    while time.time() - start < seconds:
        pass
    return (start, time.time())


def cpu_plain(seconds):
    """The same as a plain function (runs in a worker thread)."""
    import time

    start = time.time()
    while time.time() - start < seconds:
        pass
    return (start, time.time())


def square(x):
    return x * x


def noop(x):
    return x


def gen_noop(x, task=None):
    return x
    yield  # noqa: unreachable


def gen_uses_task(x, task=None):
    yield task.sleep(0.001)
    return (x, task.location.port)


def plain_uses_task(x, task=None):
    return (x, task.location.port)


def fails_at(x, bad):
    if x == bad:
        raise ValueError("bad item %d" % x)
    return x


def _boom(client_pid):
    """Unpickles in the client only: on a server it raises."""
    import os

    if os.getpid() != client_pid:
        raise RuntimeError("this cannot be unpickled here")
    return square


class ServerUnpicklable:
    """A callable (or argument) that pickles, but fails to unpickle on a server."""

    def __reduce__(self):
        return (_boom, (os.getpid(),))

    def __call__(self, x):
        return x


def overlap(a, b):
    return max(a[0], b[0]) < min(a[1], b[1])


def max_concurrency(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [cpu_gen, cpu_coro, cpu_plain], ids=["generator", "coroutine", "plain"])
@pytest_twisted.ensureDeferred
async def test_cpu_tasks_submitted_one_at_a_time_run_in_parallel(node, fn):
    """The manual's pattern (await run, then result of each): two servers busy at once, whatever the kind."""
    async with Session(node, [fn]) as comp:
        rtasks = []
        for _ in range(4):
            rtasks.append(await comp.run(fn, 0.4))
        spans = [await rt.result(timeout=60) for rt in rtasks]
    assert overlap(spans[0], spans[1]) and overlap(spans[2], spans[3])
    assert max_concurrency(spans) == 2  # CPU tasks: one per server


@pytest_twisted.ensureDeferred
async def test_run_fires_while_a_long_cpu_task_runs(node):
    async with Session(node, [cpu_gen]) as comp:
        first = await comp.run(cpu_gen, 3)
        assert first.outcome is None  # placed and sent: run() did not wait for the server
        second = await comp.run(cpu_gen, 0.1)  # the other server
        assert first.outcome is None and second.location != first.location
        assert (await second.result(timeout=60))[1] < (await first.result(timeout=60))[1]


@pytest_twisted.ensureDeferred
async def test_creation_errors_arrive_through_result(node):
    async with Session(node, [square]) as comp:
        rtask = await comp.run(ServerUnpicklable(), 1)
        with pytest.raises(dispycos.RemoteTaskError) as failed:
            await rtask.result(timeout=30)
        assert "cannot be unpickled here" in str(failed.value)
        rtask = await comp.run(square, ServerUnpicklable())  # an argument the server cannot unpickle
        with pytest.raises(dispycos.RemoteTaskError):
            await rtask.result(timeout=30)
        with pytest.raises(dispycos.RemoteTaskError):  # a whole batch of a map
            await comp.run_results(ServerUnpicklable(), range(5))
        assert await comp.run_result(square, 3) == 9  # the computation goes on
        assert await comp.run_results(square, range(5)) == [0, 1, 4, 9, 16]


@pytest_twisted.ensureDeferred
async def test_map_in_order_and_unordered_with_bounded_memory(node):
    n = 200000
    process = psutil.Process()
    async with Session(node, [noop, gen_noop]) as comp:
        before = process.memory_info().rss
        expected = 0
        async for result in comp.map(noop, range(n)):
            assert result == expected
            expected += 1
        assert expected == n
        grown = process.memory_info().rss - before
        assert grown < 64 * 2**20, grown  # nothing per task outlives its result
        seen = bytearray(n)
        count = 0
        async for result in comp.map(gen_noop, range(n), ordered=False):
            seen[result] += 1
            count += 1
        assert count == n and seen.count(1) == n  # each exactly once
        assert await comp.run_results(noop, [(i,) for i in range(1000)]) == list(range(1000))
        # A tuple item is the argument list, anything else the one argument
        # (a batch without tuples travels as its items): mixed, and without.
        assert await comp.run_results(noop, [[1, 2], "s", (3,), ((4, 5),), None]) == [[1, 2], "s", 3, (4, 5), None]
        assert await comp.run_results(noop, [[i] for i in range(300)]) == [[i] for i in range(300)]


@pytest_twisted.ensureDeferred
async def test_map_window_bounds_what_is_in_flight(node):
    async with Session(node, [noop]) as comp:
        read = []

        def items():
            for i in range(300):
                read.append(i)
                yield i

        it = comp.map(noop, items(), window=10)
        got = [await it.__anext__() for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        assert len(read) <= 5 + 10  # lazily read: yielded + window at most
        rest = [r async for r in it]
        assert got + rest == list(range(300))


@pytest_twisted.ensureDeferred
async def test_map_ends_at_the_first_failure(node):
    async with Session(node, [fails_at, square]) as comp:
        got = []
        with pytest.raises(dispycos.RemoteTaskError) as failed:
            async for r in comp.map(fails_at, [(i, 50) for i in range(1000)]):
                got.append(r)
        assert failed.value.type_name == "ValueError" and "bad item 50" in str(failed.value)
        assert got == list(range(len(got))) and len(got) <= 50
        with pytest.raises(dispycos.RemoteTaskError):
            await comp.run_results(fails_at, [(i, 7) for i in range(20)])
        assert await comp.run_result(square, 4) == 16  # servers are free again


@pytest_twisted.ensureDeferred
async def test_map_tasks_reach_the_status_stream(node):
    seen = []
    async with Session(node, [square], status_task=seen.append) as comp:
        assert await comp.run_results(square, range(30)) == [i * i for i in range(30)]
    created = [m for m in seen if getattr(m, "status", None) == dispycos.Status.TaskCreated]
    finished = [m for m in seen if getattr(m, "status", None) == dispycos.Status.TaskFinished]
    assert len(created) == len(finished) == 30
    assert sorted(m.info.result for m in finished) == sorted(i * i for i in range(30))


@pytest_twisted.ensureDeferred
async def test_map_tasks_that_use_their_task_argument(node):
    """A batch's task gets a real task object when its code uses it (generator and plain function)."""
    async with Session(node, [gen_uses_task, plain_uses_task]) as comp:
        ports = {s.port for s in await comp.servers()}
        for fn in (gen_uses_task, plain_uses_task):
            got = await comp.run_results(fn, range(40))
            assert [x for x, _ in got] == list(range(40)), fn
            assert {port for _, port in got} <= ports
