"""
Retries, timeouts, cancellation and as_completed (issue 15, SPEC 6.2), with
real node and server processes on 127.0.0.1 (and 127.0.0.2). Servers and
nodes are killed by PID; the nodes are each test's own.
"""

import os
import random
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

import dispycos
from dispycos import Computation, DispycosStatus, Scheduler, Status

from .conftest import Session
from .test_core import wait_for


# -- task functions (shipped by value) -----------------------------------------------------


def note_pid(path):
    """Append this server's pid to the file at C{path}; the number of lines so far."""
    import os

    with open(path, "a") as f:
        f.write("%d\n" % os.getpid())
    with open(path) as f:
        return len(f.read().split())


def receive_two(path, task=None):
    """Note the pid, then return the next two messages."""
    note_pid(path)
    first = yield task.receive(timeout=60)
    second = yield task.receive(timeout=60)
    return [first, second]


def sleep_gen(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


def sleep_plain(seconds):
    import time

    time.sleep(seconds)
    return seconds


def slow_double(path, x, task=None):
    """Note the pid, take 3 s, return 2x."""
    note_pid(path)
    yield task.sleep(3)
    return 2 * x


def fails_first(path):
    """Raise ValueError on the first attempt (counted in the file at C{path}), then succeed."""
    attempt = note_pid(path)
    if attempt == 1:
        raise ValueError("first attempt fails")
    return "attempt %d" % attempt


def always_fails(path):
    note_pid(path)
    raise ValueError("always")


def write_marker(path):
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


def square(x):
    return x * x


def map_item(x):
    """A map task: 5 ms in a worker thread; its square and the address of the node that ran it."""
    import time

    time.sleep(0.005)
    return (x * x, dispycos_server_location.addr)  # noqa: F821 - a global of every server


def pid_of_server():
    import os

    return os.getpid()


def short_plain(x):
    """A short task: 2 ms in a worker thread; which server ran it."""
    import time

    time.sleep(0.002)
    return (x * x, dispycos_server_location.addr)  # noqa: F821 - a global of every server


# -- helpers --------------------------------------------------------------------------------


def codes(statuses, code):
    return [s for s in statuses if isinstance(s, DispycosStatus) and s.status == code]


def pids_in(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


# -- retries of single tasks ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_task_whose_server_is_killed_runs_again_elsewhere(fresh_node, tmp_path):
    """retries=1: the server running it is SIGKILLed; the task runs again on the other server, result correct."""
    node = fresh_node(cpus=2)
    statuses = []
    path = str(tmp_path / "pids")
    async with Session(node, [slow_double], status_task=statuses.append, retries=1) as comp:
        rtask = await comp.run(slow_double, path, 21)
        first = rtask.location
        await wait_for(lambda: len(pids_in(path)) == 1, timeout=20)
        os.kill(pids_in(path)[0], signal.SIGKILL)
        assert await rtask.result(timeout=60) == 42
        assert len(pids_in(path)) == 2 and pids_in(path)[0] != pids_in(path)[1]
        assert rtask.location != first  # another server existed: not the same one again
        retried = codes(statuses, Status.TaskRetried)
        assert len(retried) == 1 and retried[0].info.task is rtask
        assert retried[0].info.args == (path, 21)
        finished = codes(statuses, Status.TaskFinished)
        assert len(finished) == 1 and finished[0].info.result == 42 and finished[0].info.exception is None
        assert len(codes(statuses, Status.TaskCreated)) == 1


@pytest_twisted.ensureDeferred
async def test_without_retries_the_task_is_abandoned(fresh_node, tmp_path):
    node = fresh_node(cpus=2)
    statuses = []
    path = str(tmp_path / "pids")
    async with Session(node, [slow_double], status_task=statuses.append) as comp:
        rtask = await comp.run(slow_double, path, 21)
        await wait_for(lambda: len(pids_in(path)) == 1, timeout=20)
        os.kill(pids_in(path)[0], signal.SIGKILL)
        with pytest.raises(dispycos.TaskAbandoned):
            await rtask.result(timeout=60)
        assert codes(statuses, Status.TaskRetried) == []
        assert len(pids_in(path)) == 1
        # options() views: the same computation, other options
        view = comp.options(retries=1)
        assert view.options(timeout=5)._options.retries == 1 and comp.retries == 0


@pytest_twisted.ensureDeferred
async def test_messages_sent_between_attempts_reach_the_next_one(fresh_node, tmp_path):
    """
    The other server is busy, so the retry waits for it: a send and a deliver
    made meanwhile are held and reach the new attempt, in order.
    """
    node = fresh_node(cpus=2)
    statuses = []
    path = str(tmp_path / "pids")
    async with Session(node, [receive_two, sleep_gen], status_task=statuses.append) as comp:
        rtask = await comp.options(retries=1).run(receive_two, path)
        busy = await comp.run(sleep_gen, 4)  # the other server, for 4 s
        assert busy.location != rtask.location
        await wait_for(lambda: len(pids_in(path)) == 1, timeout=20)
        os.kill(pids_in(path)[0], signal.SIGKILL)
        await wait_for(lambda: codes(statuses, Status.ServerDisconnected), timeout=20)
        assert not codes(statuses, Status.TaskRetried)  # between attempts: waiting for the busy server
        sent_at = time.time()
        rtask.send("first")
        delivered = rtask.deliver("second", timeout=30)
        assert await rtask.result(timeout=60) == ["first", "second"]
        assert await delivered == 1
        retried = codes(statuses, Status.TaskRetried)
        assert len(retried) == 1 and retried[0].info.start_time >= sent_at
        assert rtask.location == busy.location  # the other server (the killed one was back meanwhile)
        assert await busy.result(timeout=30) == 4


@pytest_twisted.ensureDeferred
async def test_retry_on_an_exception_type(fresh_node, tmp_path):
    """retry_on=(ValueError,): the first attempt raises, the second succeeds; never more than retries."""
    node = fresh_node(cpus=1)
    statuses = []
    async with Session(node, [fails_first, always_fails], status_task=statuses.append) as comp:
        path = str(tmp_path / "attempts")
        assert await comp.options(retries=2, retry_on=(ValueError,)).run_result(fails_first, path) == "attempt 2"
        assert len(pids_in(path)) == 2
        assert len(codes(statuses, Status.TaskRetried)) == 1
        # retries bound retry_on
        path = str(tmp_path / "always")
        with pytest.raises(dispycos.RemoteTaskError) as failed:
            await comp.options(retries=2, retry_on=ValueError).run_result(always_fails, path)
        assert failed.value.type_name == "ValueError" and len(pids_in(path)) == 3
        # retry_on without retries retries nothing; another type is not retried
        for options, name in ((dict(retry_on=(ValueError,)), "none"), (dict(retries=2, retry_on=(KeyError,)), "other")):
            path = str(tmp_path / name)
            with pytest.raises(dispycos.RemoteTaskError):
                await comp.options(**options).run_result(always_fails, path)
            assert len(pids_in(path)) == 1, name
        assert len(codes(statuses, Status.TaskRetried)) == 1 + 2


@pytest_twisted.ensureDeferred
async def test_a_retry_goes_to_another_server_when_one_exists(fresh_node, tmp_path):
    """The server of a failed attempt is still there (retry_on): the retry goes to the other one."""
    node = fresh_node(cpus=2)
    statuses = []
    async with Session(node, [fails_first], status_task=statuses.append) as comp:
        await wait_for(lambda: len(node.server_pids()) == 2, timeout=20)
        for name in ("one", "two"):  # (each time both servers are free: the same would be picked again)
            path = str(tmp_path / name)
            rtask = await comp.options(retries=1, retry_on=(ValueError,)).run(fails_first, path)
            first = rtask.location
            assert await rtask.result(timeout=30) == "attempt 2"
            pids = pids_in(path)
            assert len(pids) == 2 and pids[0] != pids[1] and rtask.location != first
        assert len(codes(statuses, Status.TaskRetried)) == 2


@pytest_twisted.ensureDeferred
async def test_retries_and_cancel_through_a_shared_scheduler(fresh_node, tmp_path):
    """
    The same through a shared scheduler process: a retry keeps off the
    server of the failed attempt (the placement says so over the wire), a
    task whose server is SIGKILLed runs again, a cancelled queued run never
    starts.
    """
    from .test_shared import SchedulerProcess

    node = fresh_node(cpus=2)
    sched = SchedulerProcess([node.location], node.secret)
    statuses = []
    comp = Computation([fails_first, slow_double, sleep_gen, write_marker, square], secret=node.secret,
                       status_task=statuses.append, retries=1)
    try:
        await comp.schedule(sched.location, timeout=30)
        await _servers(comp, 2)
        path = str(tmp_path / "attempts")
        assert await comp.options(retry_on=(ValueError,)).run_result(fails_first, path) == "attempt 2"
        assert len(set(pids_in(path))) == 2

        path = str(tmp_path / "pids")
        rtask = await comp.run(slow_double, path, 4)
        await wait_for(lambda: len(pids_in(path)) == 1, timeout=20)
        os.kill(pids_in(path)[0], signal.SIGKILL)
        assert await rtask.result(timeout=60) == 8
        assert len(codes(statuses, Status.TaskRetried)) == 2

        await wait_for(lambda: len(node.server_pids()) == 2, timeout=30)
        await _servers(comp, 2)
        busy = [await comp.run(sleep_gen, 1) for _ in range(2)]
        marker = tmp_path / "marker"
        queued = comp.run(write_marker, str(marker))
        assert not queued.called
        queued.cancel()
        with pytest.raises(defer.CancelledError):
            await queued
        assert await comp.run_result(square, 5) == 25
        assert [await b.result(timeout=30) for b in busy] == [1, 1]
        assert not marker.exists()
    finally:
        await comp.close(terminate=True)
        sched.stop()


# -- retries of maps ---------------------------------------------------------------------------


async def _servers(comp, count):
    """Wait (bounded) until C{comp} has C{count} servers."""
    for _ in range(400):
        if len(await comp.servers()) >= count:
            return
        await sleep(0.05)
    raise AssertionError("fewer than %d servers" % count)


@pytest_twisted.ensureDeferred
async def test_a_node_killed_mid_map_loses_and_repeats_no_result(fresh_node):
    """
    2,000 items over two nodes of 2 servers, retries=2: the node on
    127.0.0.2 is SIGKILLed (its whole process group) after 400 results; the
    map still yields every result exactly once, in input order, the rest
    from the node that is left.
    """
    import secrets

    secret = secrets.token_hex(8)
    a = fresh_node(cpus=2, secret=secret, host="127.0.0.1")
    b = fresh_node(cpus=2, secret=secret, host="127.0.0.2")
    statuses = []
    scheduler = Scheduler(nodes=[a.location, b.location], secret=secret, discover=False)
    comp = Computation([map_item], status_task=statuses.append, retries=2)
    try:
        await comp.schedule(timeout=30)
        await _servers(comp, 4)
        results = []
        async for r in comp.map(map_item, range(2000)):
            results.append(r)
            if len(results) == 400:
                assert {addr for _, addr in results} == {"127.0.0.1", "127.0.0.2"}
                os.killpg(b.proc.pid, signal.SIGKILL)
        assert [value for value, _ in results] == [x * x for x in range(2000)]
        assert len(codes(statuses, Status.TaskCreated)) == 2000
        retried = codes(statuses, Status.TaskRetried)
        assert len(retried) >= 1  # what the node had not sent back ran again
        assert all(s.info.task.location.addr == "127.0.0.1" for s in retried)
        finished = codes(statuses, Status.TaskFinished)
        assert len(finished) == 2000 and all(s.info.exception is None for s in finished)
        assert len({s.info.task.tid for s in finished}) == 2000
        assert await comp.servers() and all(loc.addr == "127.0.0.1" for loc in await comp.servers())
    finally:
        await comp.close(terminate=True)
        await scheduler.close()


@pytest_twisted.ensureDeferred
async def test_chaos_map_with_servers_killed_at_random(fresh_node):
    """
    5,000 short tasks through map(..., retries=3) while a random server of
    the node is SIGKILLed every 0.5 s (at most 8 times; the node starts a
    fresh one each time): all 5,000 results, correct, in order, none
    missing or twice.
    """
    node = fresh_node(cpus=3)
    statuses = []
    rng = random.Random(15)
    kills = []
    async with Session(node, [short_plain], status_task=statuses.append, retries=3) as comp:
        await _servers(comp, 3)

        def kill_one():
            pids = node.server_pids()
            if pids and len(kills) < 8:
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)
                except ProcessLookupError:
                    pass

        killer = task.LoopingCall(kill_one)
        killer.start(0.5, now=False)
        started = time.monotonic()
        try:
            results = [value async for value, _ in comp.map(short_plain, range(5000))]
        finally:
            killer.stop()
        took = time.monotonic() - started
        assert results == [x * x for x in range(5000)]
        assert len(kills) >= 3, kills  # the servers were killed while the map ran
        finished = codes(statuses, Status.TaskFinished)
        assert len(finished) == 5000 and all(s.info.exception is None for s in finished)
        assert len(codes(statuses, Status.TaskCreated)) == 5000
        retried = len(codes(statuses, Status.TaskRetried))
        assert retried >= 1
        print("chaos map: 5000 results, %d servers killed, %d tasks retried, %.1f s" % (len(kills), retried, took))


@pytest_twisted.ensureDeferred
async def test_a_map_with_a_timeout(fresh_node):
    """timeout=2 on run_results: the batch stuck in time.sleep(30) ends the run with TaskTimeout; the node goes on."""
    node = fresh_node(cpus=1)
    async with Session(node, [sleep_plain]) as comp:
        started = time.monotonic()
        with pytest.raises(dispycos.TaskTimeout):
            await comp.options(timeout=2).run_results(sleep_plain, [0.1, 30, 0.1])
        assert time.monotonic() - started < 25
        assert await comp.options(timeout=2).run_results(sleep_plain, [0.1, 0.2]) == [0.1, 0.2]


# -- timeouts ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeout_of_a_generator_task(fresh_node):
    """A generator sleeping 30 s with timeout=1: TaskTimeout soon; the same server runs the next task."""
    node = fresh_node(cpus=1)
    statuses = []
    async with Session(node, [sleep_gen, pid_of_server], status_task=statuses.append, timeout=1) as comp:
        pid = await comp.run_result(pid_of_server)
        started = time.monotonic()
        rtask = await comp.run(sleep_gen, 30)
        with pytest.raises(dispycos.TaskTimeout):
            await rtask.result(timeout=60)
        assert time.monotonic() - started < 20  # generous: 1 s is the timeout
        finished = codes(statuses, Status.TaskFinished)
        assert isinstance(finished[-1].info.exception, dispycos.TaskTimeout)
        assert await comp.options(timeout=None).run_result(pid_of_server) == pid  # the same process
        assert await comp.run_result(sleep_gen, 0.1) == 0.1  # within its timeout: its result


@pytest_twisted.ensureDeferred
async def test_timeout_of_a_plain_function_replaces_its_server(fresh_node):
    """
    time.sleep(30) in a worker thread cannot be interrupted: with timeout=1
    its server process is replaced; the client sees TaskTimeout (not
    TaskAbandoned), another task on that server is retried as usual, and
    the replacement runs the next task.
    """
    node = fresh_node(cpus=1)
    statuses = []
    async with Session(node, [sleep_plain, sleep_gen, pid_of_server], status_task=statuses.append) as comp:
        pid = await comp.run_result(pid_of_server)
        other = await comp.options(retries=1).run_async(sleep_gen, 4)  # shares the server
        started = time.monotonic()
        rtask = await comp.options(timeout=1).run(sleep_plain, 30)
        with pytest.raises(dispycos.TaskTimeout):
            await rtask.result(timeout=60)
        assert time.monotonic() - started < 25
        assert await other.result(timeout=60) == 4  # abandoned with the server, run again on its replacement
        assert len(codes(statuses, Status.TaskRetried)) == 1
        new_pid = await comp.run_result(pid_of_server)
        assert new_pid != pid and node.server_pids() == [new_pid]
        assert await comp.run_result(sleep_plain, 0.1) == 0.1
        assert "did not end within its grace" in node.output()
        timed_out = [s.info for s in codes(statuses, Status.TaskFinished) if s.info.task is rtask]
        assert len(timed_out) == 1 and isinstance(timed_out[0].exception, dispycos.TaskTimeout)


# -- cancellation --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cancel_a_queued_run(fresh_node, tmp_path):
    """cancel() on a run() still waiting for a server: the task never starts."""
    node = fresh_node(cpus=1)
    statuses = []
    marker = tmp_path / "marker"
    async with Session(node, [sleep_gen, write_marker, square], status_task=statuses.append) as comp:
        busy = await comp.run(sleep_gen, 1)
        queued = comp.run(write_marker, str(marker))
        assert not queued.called  # waits for the only server
        queued.cancel()
        with pytest.raises(defer.CancelledError):
            await queued
        after = comp.run(square, 3)  # queued behind the cancelled one (first come, first served)
        assert await (await after).result(timeout=30) == 9
        assert await busy.result(timeout=30) == 1
        assert not marker.exists()
        created = [s.info.task.name for s in codes(statuses, Status.TaskCreated)]
        assert created == ["sleep_gen", "square"]


@pytest_twisted.ensureDeferred
async def test_cancel_result_terminates_the_task(fresh_node):
    """cancel() on result() terminates the task; a result() that times out leaves it running."""
    node = fresh_node(cpus=1)
    statuses = []
    async with Session(node, [sleep_gen], status_task=statuses.append) as comp:
        rtask = await comp.run(sleep_gen, 1.5)
        with pytest.raises(dispycos.TimeoutError):
            await rtask.result(timeout=0.2)
        assert await rtask.result(timeout=30) == 1.5  # it went on

        rtask = await comp.run(sleep_gen, 30)
        waiting = rtask.result()
        waiting.cancel()
        with pytest.raises(defer.CancelledError):
            await waiting
        with pytest.raises(dispycos.TaskTerminated):
            await rtask.result(timeout=20)
        finished = [s.info for s in codes(statuses, Status.TaskFinished) if s.info.task is rtask]
        assert len(finished) == 1 and isinstance(finished[0].exception, dispycos.TaskTerminated)
        assert await comp.run_result(sleep_gen, 0.1) == 0.1


# -- as_completed -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_as_completed_yields_in_completion_order(node):
    async with Session(node, [sleep_gen]) as comp:
        rtasks = [await comp.run_async(sleep_gen, s) for s in (1.5, 0.2, 0.8)]
        order = [rtasks.index(rt) + 1 async for rt in dispycos.as_completed(rtasks)]
        assert order == [2, 3, 1]
        rtasks = [await comp.run_async(sleep_gen, s) for s in (0.1, 20)]
        got = []
        with pytest.raises(dispycos.TimeoutError):
            async for rt in dispycos.as_completed(rtasks, timeout=2):
                got.append(await rt.result())
        assert got == [0.1]
        await rtasks[1].terminate()


# -- progress ----------------------------------------------------------------------------------


def test_progress_counter_line_figures():
    """Without tqdm: one line with count, percentage, rate and ETA, rewritten in place."""
    import io

    from dispycos.client.progress import CounterLine

    now = [100.0]
    out = io.StringIO()
    line = CounterLine(100, out, desc="square", clock=lambda: now[0])
    now[0] = 105.0
    line.update(50)
    assert line.line(now[0]) == "square: 50/100 tasks (50%), 10.0 tasks/s, ETA 00:05"
    now[0] = 110.0
    line.update(50)
    line.close()
    text = out.getvalue()
    assert text.startswith("\rsquare: 50/100") and text.endswith("100/100 tasks (100%), 10.0 tasks/s, ETA 00:00\x1b[K\n")
    assert CounterLine(None, out, clock=lambda: 10.0).line(70.0) == "0 tasks, 0.0 tasks/s, 01:00"


class _Terminal:
    """A pseudo-terminal: C{stream} (its slave end, a terminal) and what was written to it so far."""

    def __init__(self):
        import pty

        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.stream = os.fdopen(slave, "w")
        self.chunks = []
        self.reader = task.LoopingCall(self.read)  # drained on the reactor: a writer never blocks on it
        self.reader.start(0.02)

    def resize(self, columns):
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self):
        self.stream.flush()
        self.read()
        return b"".join(self.chunks).decode("utf-8", "replace")

    def close(self):
        self.reader.stop()
        self.stream.close()
        os.close(self.master)


@pytest_twisted.ensureDeferred
async def test_progress_bar_on_a_terminal_and_nothing_elsewhere(node, monkeypatch, tmp_path):
    """
    progress=True: a bar with count, rate and ETA (tqdm's; without tqdm the
    counter line) when stderr is a terminal; nothing when it is a file.
    """
    import re
    import sys

    from dispycos.client.progress import progress_bar

    terminal = _Terminal()
    try:
        async with Session(node, [square]) as comp:
            monkeypatch.setattr(sys, "stderr", terminal.stream)
            assert await comp.run_results(square, range(300), progress=True) == [x * x for x in range(300)]
            text = terminal.text()
            assert "300/300" in text and "task/s" in text
            assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", text)  # elapsed < time left
            assert "|" in text  # a bar (the terminal reports no size: the usual width)
            terminal.resize(100)
            assert [r async for r in comp.options(retries=1).map(square, range(200), progress=True)] == [
                x * x for x in range(200)]
            last = terminal.text()[len(text):].rstrip().rsplit("\r", 1)[-1]
            assert "200/200" in last and "|" in last and len(last) <= 100

            monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: the counter line
            seen = len(terminal.text())
            assert await comp.run_results(square, range(100), progress=True) == [x * x for x in range(100)]
            line = terminal.text()[seen:]
            assert "100/100 tasks (100%)" in line and "tasks/s, ETA 00:00" in line and "|" not in line
            monkeypatch.delitem(sys.modules, "tqdm")

            # not a terminal: nothing at all
            with open(tmp_path / "stderr", "w") as f:
                monkeypatch.setattr(sys, "stderr", f)
                assert progress_bar(10) is None
                assert await comp.run_results(square, range(300), progress=True) == [x * x for x in range(300)]
                assert [r async for r in comp.map(square, range(50), progress=True)] == [x * x for x in range(50)]
            assert (tmp_path / "stderr").read_text() == ""
            assert await comp.run_results(square, range(10)) == [x * x for x in range(10)]
            monkeypatch.setattr(sys, "stderr", terminal.stream)
            seen = len(terminal.text())
            assert await comp.run_results(square, range(300)) == [x * x for x in range(300)]
            assert terminal.text()[seen:] == ""  # (no progress asked: none)
    finally:
        monkeypatch.undo()
        terminal.close()
