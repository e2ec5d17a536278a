"""
End-to-end tests of the core runtime: a real dispycosnode with real server
processes on 127.0.0.1, a private scheduler and the client API in this process.
"""

import os
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

import dispycos
from dispycos import Computation, Scheduler

from .conftest import Session


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, timeout=20, step=0.05):
    """Wait (bounded) until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        await sleep(step)




# -- task functions (shipped by value: this module is not installed) -----------


def gen_square(n, task=None):
    yield task.sleep(0.01)
    return n * n


async def coro_add(a, b, task=None):
    await task.sleep(0.01)
    return a + b


def plain_mul(a, b):
    return a * b


def gen_last_yield(n, task=None):
    yield task.sleep(0.01)
    yield n + 100


def raise_value_error(text):
    raise ValueError(text)


def gen_raise(text, task=None):
    yield task.sleep(0.01)
    raise KeyError(text)


def collect(n, task=None):
    got = []
    for _ in range(n):
        msg = yield task.receive(timeout=30)
        got.append(msg)
    return got


def echo_back(reply, n, task=None):
    """Send n numbers to reply, then deliver a marker (acknowledged)."""
    for i in range(n):
        reply.send(i)
    result = yield reply.deliver("done", timeout=10)
    return result


def deliver_and_collect(task=None):
    msg = yield task.receive(timeout=30)
    return msg


def forever(task=None):
    while True:
        yield task.sleep(0.05)


async def coro_forever(task=None):
    while True:
        await task.sleep(0.05)


def plain_spin():
    while True:
        sum(range(1000))


def blocking_then_drain(seconds, task=None):
    """Block the thread for `seconds`, then drain the mailbox."""
    time.sleep(seconds)
    got = []
    while True:
        try:
            got.append(task.receive(timeout=2))
        except dispycos.TimeoutError:
            return got


def blob_len(blob):
    return len(blob), blob[:4], blob[-4:]


def make_blob(n):
    return bytes(range(256)) * (n // 256)


def where_am_i(task=None):
    yield task.sleep(0)
    return os.getpid(), os.getcwd()


def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


# -- tests -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_three_function_kinds(node):
    async with Session(node, [gen_square, coro_add, plain_mul, gen_last_yield]) as comp:
        assert await comp.run_result(gen_square, 7) == 49
        assert await comp.run_result(coro_add, 2, 3) == 5
        assert await comp.run_result(plain_mul, 6, 7) == 42
        assert await comp.run_result(gen_last_yield, 1) == 101
        rtask = await comp.run(gen_square, 3)
        assert isinstance(rtask, dispycos.RemoteTask)
        assert rtask.location in await comp.servers()
        assert await rtask.finish() == 9
        # a function that is not a component travels by value
        assert await (await comp.run_async(lambda x: x + 1, 1)).result() == 2
        assert await comp.run_result(lambda x: x - 1, 1) == 0
        # pycos aliases
        rt = await comp.rtask(gen_square, 2)
        assert await rt() == 4
        rt = await comp.io_rtask(coro_add, 1, 1)
        assert await rt.result() == 2


@pytest_twisted.ensureDeferred
async def test_run_results_keeps_input_order(node):
    async with Session(node, [gen_square, coro_add]) as comp:
        results = await comp.run_results(gen_square, range(45))
        assert results == [i * i for i in range(45)]
        results = await comp.run_results(coro_add, [(i, 1) for i in range(40)])
        assert results == [i + 1 for i in range(40)]


@pytest_twisted.ensureDeferred
async def test_exceptions_propagate(node):
    async with Session(node, [raise_value_error, gen_raise]) as comp:
        with pytest.raises(dispycos.RemoteTaskError) as info:
            await comp.run_result(raise_value_error, "boom 1")
        e = info.value
        assert e.type_name == "ValueError"
        assert e.text == "boom 1"
        assert "raise_value_error" in e.traceback and "ValueError: boom 1" in e.traceback
        assert isinstance(e.exception, ValueError)
        assert isinstance(e, dispycos.DispycosError)
        with pytest.raises(dispycos.RemoteTaskError) as info:
            await comp.run_result(gen_raise, "boom 2")
        assert info.value.type_name == "KeyError"


@pytest_twisted.ensureDeferred
async def test_ordered_send_and_deliver_both_ways(node):
    async with Session(node, [collect, echo_back]) as comp:
        rtask = await comp.run(collect, 300)
        for i in range(250):
            rtask.send(i)
        for i in range(250, 300):
            assert await rtask.deliver(i, timeout=10) == 1
        assert await rtask.result() == list(range(300))

        # remote -> client: ordered sends, then an acknowledged deliver
        got = []
        done = defer.Deferred()

        def reply_proc(task=None):
            while True:
                msg = yield task.receive()
                if msg == "done":
                    done.callback(None)
                    return
                got.append(msg)

        reply = dispycos.Task(reply_proc)
        rtask = await comp.run(echo_back, reply, 250)
        assert await rtask.result() == 1
        await done
        assert got == list(range(250))


@pytest_twisted.ensureDeferred
async def test_deliver_to_ended_task_errbacks(node):
    async with Session(node, [gen_square]) as comp:
        rtask = await comp.run(gen_square, 2)
        await rtask.result()
        with pytest.raises(dispycos.DispycosError):
            await rtask.deliver("late", timeout=5)


@pytest_twisted.ensureDeferred
async def test_terminate_each_kind(node):
    async with Session(node, [forever, coro_forever, plain_spin]) as comp:
        for fn in (forever, coro_forever, plain_spin):
            rtask = await comp.run_async(fn)
            await sleep(0.2)
            await rtask.terminate()
            with pytest.raises(dispycos.TaskTerminated):
                await rtask.result(timeout=10)


@pytest_twisted.ensureDeferred
async def test_plain_function_blocking_keeps_messages(node):
    async with Session(node, [blocking_then_drain]) as comp:
        rtask = await comp.run(blocking_then_drain, 3)
        for i in range(50):
            if i % 10 == 0:
                await sleep(0.2)
            rtask.send(i)
        # acknowledged delivery while the task's thread is still blocked
        assert await rtask.deliver("acked", timeout=10) == 1
        assert await rtask.result(timeout=30) == list(range(50)) + ["acked"]


@pytest_twisted.ensureDeferred
async def test_large_argument_and_result(node):
    async with Session(node, [blob_len, make_blob]) as comp:
        blob = os.urandom(6 * 1024 * 1024)
        assert await comp.run_result(blob_len, blob) == (len(blob), blob[:4], blob[-4:])
        big = await comp.run_result(make_blob, 5 * 1024 * 1024)
        assert big == bytes(range(256)) * (5 * 1024 * 1024 // 256)


@pytest_twisted.ensureDeferred
async def test_unpicklable_fails_clearly_and_over_cap_streams(node):
    import threading

    async with Session(node, [blob_len]) as comp:
        with pytest.raises(dispycos.PicklingError) as info:
            await comp.run(blob_len, threading.Lock())
        assert "blob_len" in str(info.value)
        # over the inline cap: it travels as a stream instead
        big = b"x" * (dispycos.config.MaxInlineBytes + 1)
        assert (await comp.run_result(blob_len, big))[0] == len(big)
        # the computation still works afterwards
        assert (await comp.run_result(blob_len, b"abcd"))[0] == 4


@pytest_twisted.ensureDeferred
async def test_cpu_tasks_one_per_server_fifo(node):
    async with Session(node, [slow]) as comp:
        servers = await comp.servers()
        assert len(servers) == 2
        tasks = [await comp.run(slow, 0.5), await comp.run(slow, 0.5)]
        assert {t.location for t in tasks} == set(servers)
        third = comp.run(slow, 0.01)
        await sleep(0.2)
        assert not third.called  # every server runs a CPU task
        rt = await third
        assert rt.location in servers
        await defer.gatherResults([t.result() for t in tasks + [rt]])
        # async tasks are not limited
        many = [await comp.run_async(slow, 0.3) for _ in range(6)]
        assert await defer.gatherResults([t.result() for t in many]) == [0.3] * 6


@pytest_twisted.ensureDeferred
async def test_run_at_node_and_server(node):
    async with Session(node, [where_am_i]) as comp:
        servers = await comp.servers()
        for loc in servers:
            rt = await comp.run_at(loc, where_am_i)
            assert rt.location == loc
            await rt.result()
        nodes = await comp.nodes()
        assert nodes == ["127.0.0.1"]
        rt = await comp.run_at("127.0.0.1", where_am_i)
        assert rt.location in servers
        await rt.result()
        with pytest.raises(dispycos.NoServerError):
            await comp.run_at(dispycos.Location("127.0.0.1", 1), where_am_i)


@pytest_twisted.ensureDeferred
async def test_server_killed_abandons_task_and_is_replaced(fresh_node):
    node = fresh_node(cpus=2)
    async with Session(node, [slow, where_am_i]) as comp:
        servers = await comp.servers()
        rtask = await comp.run(slow, 60)
        victims = node.server_pids()
        assert len(victims) == 2
        # find the pid of the server running the task
        pid_at = {}
        for loc in servers:
            p, _ = await comp.run_async_at(loc, where_am_i).addCallback(lambda t: t.result())
            pid_at[loc] = p
        os.kill(pid_at[rtask.location], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(dispycos.TaskAbandoned):
            await rtask.result(timeout=10)
        assert time.monotonic() - started < 5
        # a new server takes its place (same location: fixed per slot)
        try:
            await wait_for(lambda: len(node.server_pids()) == 2 and pid_at[rtask.location] not in node.server_pids())
        except AssertionError:
            print(node.output()[-5000:])
            raise
        await wait_for(lambda: len([e for e in comp._scheduler.servers if e.ready]) == 2)
        try:
            p, _ = await (await comp.run_at(rtask.location, where_am_i)).result(timeout=10)
        except Exception:
            print("SERVERS", [(e.location, e.ready) for e in comp._scheduler.servers])
            print(node.output()[-4000:])
            raise
        assert p != pid_at[rtask.location]


@pytest_twisted.ensureDeferred
async def test_node_killed_pending_deferreds_errback(fresh_node):
    node = fresh_node(cpus=2)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret)
    comp = Computation([slow])
    try:
        await comp.schedule(timeout=30)
        running = [await comp.run(slow, 60), await comp.run(slow, 60)]
        waiting = comp.run(slow, 1)  # no free server: waits
        results = [t.result() for t in running]
        node.kill(signal.SIGKILL)
        for d in results:
            with pytest.raises(dispycos.TaskAbandoned):
                await d
        # The waiting task fails: either no server is left to place it on, or it
        # went to a server being lost, and its creation fails through result().
        try:
            placed = await waiting
        except dispycos.DispycosError:
            pass
        else:
            with pytest.raises(dispycos.TaskAbandoned):
                await placed.result(timeout=30)
        # The client can see its server links fail (or its connections to them
        # never made) before the scheduler reads the end of the node link: the
        # scheduler then places nothing more on those servers, so a new task
        # fails, not goes to a dead server.
        with pytest.raises(dispycos.DispycosError):
            await comp.run(slow, 1)
    finally:
        await comp.close()
        await scheduler.close()
    await wait_for(lambda: node.proc.poll() is not None)
    await wait_for(lambda: node.server_pids() == [])


@pytest_twisted.ensureDeferred
async def test_wrong_secret_schedule_errbacks(node):
    scheduler = Scheduler(nodes=[node.location], secret="not the secret")
    comp = Computation([slow])
    try:
        with pytest.raises(dispycos.ScheduleError) as info:
            await comp.schedule(timeout=30)
        assert "refused" in str(info.value)
    finally:
        await comp.close()
        await scheduler.close()


@pytest_twisted.ensureDeferred
async def test_no_files_remain_after_close(node, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")

    def read_component(task=None):
        yield task.sleep(0)
        with open(os.path.join("..", "data.txt")) as f:
            text = f.read()
        with open("scratch.txt", "w") as f:  # in the server's own directory
            f.write("x")
        return text, os.path.basename(os.getcwd())

    cwd = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        session = Session(node, [read_component, str(data)])
    finally:
        os.chdir(cwd)
    async with session as comp:
        text, where = await comp.run_result(read_component)
        assert text == "hello" and where.startswith("server-")
        assert os.listdir(node.node_dir)
    await wait_for(lambda: os.listdir(node.node_dir) == [], timeout=10)


@pytest_twisted.ensureDeferred
async def test_globals_do_not_survive_close(node):
    def set_global(task=None):
        global dispycos_test_marker
        yield task.sleep(0)
        dispycos_test_marker = os.getpid()
        return dispycos_test_marker

    def get_global(task=None):
        yield task.sleep(0)
        return globals().get("dispycos_test_marker")

    async with Session(node, [set_global, get_global]) as comp:
        servers = await comp.servers()
        for loc in servers:
            await comp.run_result_at(loc, set_global)
        for loc in servers:
            assert await comp.run_result_at(loc, get_global) is not None
    async with Session(node, [set_global, get_global]) as comp:
        for loc in await comp.servers():
            assert await comp.run_result_at(loc, get_global) is None


@pytest_twisted.ensureDeferred
async def test_close_terminates_async_tasks(node):
    async with Session(node, [slow, forever]) as comp:
        cpu = await comp.run(slow, 0.3)
        stray = await comp.run_async(forever)
        await comp.close()
        assert await cpu.result() == 0.3
        with pytest.raises(dispycos.TaskTerminated):
            await stray.result()


CLIENT_SCRIPT = r'''
import sys
from twisted.internet import task, defer
import dispycos

def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds

async def main(reactor):
    dispycos.Scheduler(nodes=[sys.argv[1]], secret=sys.argv[2])
    comp = dispycos.Computation([slow])
    await comp.schedule(timeout=30)
    rtask = await comp.run(slow, 60)
    print("RUNNING", flush=True)
    try:
        await rtask.result()
        print("UNEXPECTED RESULT", flush=True)
    except dispycos.TaskAbandoned:
        print("ABANDONED", flush=True)
    await comp.close()
    print("CLOSED", flush=True)

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


def test_client_process_exits_cleanly_when_node_dies(fresh_node, tmp_path):
    import subprocess
    import sys

    from .conftest import env_for_children

    node = fresh_node(cpus=1)
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), node.location, node.secret], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env_for_children(), text=True)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        node.kill(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "ABANDONED" in out and "CLOSED" in out, out


@pytest_twisted.ensureDeferred
async def test_thousands_of_tasks_at_once_complete(node):
    """Many pipelined task creations fill the write buffers; nothing may stall."""
    async with Session(node, [plain_mul, gen_square]) as comp:
        rts = await defer.gatherResults([comp.run_async(plain_mul, i, 2) for i in range(3000)])
        assert await defer.gatherResults([rt.result(timeout=60) for rt in rts]) == [2 * i for i in range(3000)]
        assert await comp.run_results(gen_square, range(300)) == [i * i for i in range(300)]
