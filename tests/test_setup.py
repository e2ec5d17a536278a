"""
Setup hooks and control of nodes and servers, with a real node: node_setup
globals reach every server, disable/enable with arguments, suspend/resume,
close_server with restart, and dispycos_close_server/node inside tasks.
"""

import os
from collections import Counter

import pytest
import pytest_twisted

import dispycos
from dispycos import DispycosStatus, Status

from . import conftest

from .test_core import sleep, wait_for


class Session(conftest.Session):
    """With the status messages in C{statuses}."""

    def __init__(self, node, components, **kw):
        self.statuses = kw.pop("statuses", [])
        kw.setdefault("status_task", self.statuses.append)
        super().__init__(node, components, **kw)

    def count(self):
        return Counter(s.status for s in self.statuses if isinstance(s, DispycosStatus))


def setup_node(tag="default", task=None):
    global node_data, hashlib
    import hashlib

    yield task.sleep(0)
    node_data = (tag, os.getpid())
    return 0


def read_node_data(task=None):
    yield task.sleep(0)
    return node_data[0], node_data[1] != os.getpid(), hashlib.md5(b"x").hexdigest()


def setup_server(tag="none", task=None):
    global server_data
    yield task.sleep(0)
    server_data = tag
    return 0


def read_server_data(task=None):
    yield task.sleep(0)
    return server_data


def failing_setup(task=None):
    yield task.sleep(0)
    return 1


def pid(task=None):
    yield task.sleep(0)
    return os.getpid()


def close_me(restart, task=None):
    yield task.sleep(0)
    dispycos_close_server(restart=restart)
    return os.getpid()


def close_my_node(task=None):
    yield task.sleep(0)
    dispycos_close_node()
    return 0


async def servers_ready(comp, n):
    for _ in range(200):
        if len(await comp.servers()) >= n:
            return await comp.servers()
        await sleep(0.05)
    raise AssertionError("servers did not come up")


@pytest_twisted.ensureDeferred
async def test_node_setup_globals_reach_every_server(node):
    s = Session(node, [read_node_data], node_setup=setup_node)
    async with s as comp:
        servers = await servers_ready(comp, 2)
        for loc in servers:
            tag, other_process, md5 = await comp.run_result_at(loc, read_node_data)
            assert tag == "default" and md5 == "9dd4e461268c8034f5c8564e155c67a6"
        # the setup ran once, in one process: at least one server is not it
        answers = [await comp.run_result_at(loc, read_node_data) for loc in servers]
        assert any(other for _, other, _ in answers)


@pytest_twisted.ensureDeferred
async def test_disable_nodes_then_enable_with_arguments(node):
    enabled = []

    def status(msg):
        s.statuses.append(msg)
        if isinstance(msg, DispycosStatus) and msg.status == Status.NodeDiscovered:
            enabled.append(s.comp.enable_node(msg.info.addr, "from-client"))

    s = Session(node, [read_node_data], node_setup=setup_node, disable_nodes=True, status_task=status)
    async with s as comp:
        await wait_for(lambda: enabled, timeout=20)
        await enabled[0]
        await servers_ready(comp, 2)
        assert (await comp.run_result(read_node_data))[0] == "from-client"
    assert s.count()[Status.NodeDiscovered] == 1 and s.count()[Status.NodeInitialized] == 1


@pytest_twisted.ensureDeferred
async def test_disable_servers_then_enable_each_with_its_argument(node):
    s = Session(node, [read_server_data], server_setup=setup_server, disable_servers=True)
    async with s as comp:
        await wait_for(lambda: s.count()[Status.ServerDiscovered] == 2, timeout=20)
        assert s.count()[Status.ServerInitialized] == 0  # held until enable_server
        held = [m.info for m in s.statuses if isinstance(m, DispycosStatus) and m.status == Status.ServerDiscovered]
        for i, loc in enumerate(held):
            await comp.enable_server(loc, "server-%d" % i)
        assert s.count()[Status.ServerInitialized] == 2
        for i, loc in enumerate(held):
            assert await comp.run_result_at(loc, read_server_data) == "server-%d" % i


@pytest_twisted.ensureDeferred
async def test_failing_node_setup_is_reported(node):
    s = Session(node, [pid], node_setup=failing_setup)
    with pytest.raises(dispycos.ScheduleError):
        await s.comp.schedule(timeout=10)
    await s.scheduler.close()
    closed = [m for m in s.statuses if isinstance(m, DispycosStatus) and m.status == Status.NodeClosed]
    assert len(closed) == 1 and isinstance(closed[0].exception, dispycos.SetupError)
    assert "failing_setup" in str(closed[0].exception)


@pytest_twisted.ensureDeferred
async def test_suspend_and_resume_server(node):
    s = Session(node, [pid])
    async with s as comp:
        a, b = await servers_ready(comp, 2)
        await comp.suspend_server(a)
        for _ in range(4):
            rt = await comp.run(pid)
            assert rt.location == b
            await rt.result()
        await comp.resume_server(a)
        places = set()
        for _ in range(6):
            rts = [await comp.run(pid), await comp.run(pid)]
            places.update(rt.location for rt in rts)
            for rt in rts:
                await rt.result()
        assert places == {a, b}
        c = s.count()
        assert c[Status.ServerSuspended] == 1 and c[Status.ServerResumed] == 1


@pytest_twisted.ensureDeferred
async def test_close_server_with_restart_gives_a_fresh_process(node):
    s = Session(node, [pid])
    async with s as comp:
        a, b = await servers_ready(comp, 2)
        before = await comp.run_result_at(a, pid)
        await comp.close_server(a, restart=True)
        await wait_for(lambda: s.count()[Status.ServerInitialized] >= 3, timeout=30)
        after = await comp.run_result_at(a, pid)
        assert after != before
        assert s.count()[Status.ServerClosed] >= 1


@pytest_twisted.ensureDeferred
async def test_dispycos_close_server_and_node_inside_tasks(node):
    s = Session(node, [close_me, close_my_node, pid])
    async with s as comp:
        a, b = await servers_ready(comp, 2)
        old = await comp.run_result_at(a, close_me, True)
        await wait_for(lambda: s.count()[Status.ServerInitialized] >= 3, timeout=30)
        assert await comp.run_result_at(a, pid) != old
        await comp.run_result_at(b, close_my_node)
        await wait_for(lambda: s.count()[Status.NodeClosed] == 1, timeout=30)
        assert await comp.servers() == []
