"""
Forked servers (SPEC 6.6, dispycos.zygote): a dispycosnode forks its servers
from a zygote it forked before its reactor; they die with it; --no_fork and
DISPYCOS_NO_FORK=1 spawn them as before. Real processes.
"""

import os
import signal
import time

import psutil
import pytest
import pytest_twisted

from .conftest import NodeProcess, Session


def whoami():
    import os
    import sys

    # dispycos.nodetap is the node's command line: a spawned server never imports it,
    # a forked one has it from the zygote, which imported it before the fork.
    return {"pid": os.getpid(), "ppid": os.getppid(), "nodetap": "dispycos.nodetap" in sys.modules,
            "reactor_running": __import__("twisted.internet.reactor").internet.reactor.running}


def wait_for(predicate, timeout=30.0, what="condition"):
    """Poll C{predicate} until true (bounded: fails after C{timeout} s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest_twisted.ensureDeferred
async def test_servers_are_forked_from_the_zygote(fresh_node):
    node = fresh_node(cpus=2)
    zygotes = node.zygote_pids()
    assert len(zygotes) == 1, node.output()
    zygote = zygotes[0]
    servers = wait_for(lambda: len(node.server_pids()) == 2 and node.server_pids(), what="2 servers")
    assert {psutil.Process(pid).ppid() for pid in servers} == {zygote}
    assert psutil.Process(zygote).ppid() == node.proc.pid
    async with Session(node, [whoami]) as comp:
        seen = await comp.run_result(whoami)
    assert seen["pid"] in servers
    assert seen["ppid"] == zygote
    assert seen["nodetap"] is True
    assert seen["reactor_running"] is True
    # The zygote itself runs no reactor: it has no TCP sockets and no threads.
    z = psutil.Process(zygote)
    assert z.num_threads() == 1
    assert z.net_connections(kind="inet") == []


@pytest_twisted.ensureDeferred
async def test_killed_server_is_forked_again(fresh_node):
    node = fresh_node(cpus=2)
    zygote = node.zygote_pids()[0]
    servers = wait_for(lambda: len(node.server_pids()) == 2 and node.server_pids(), what="2 servers")
    victim = servers[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (lambda p: len(p) == 2 and victim not in p and p)(node.server_pids()),
                     what="a replacement server")
    assert servers[1] in after
    (new,) = set(after) - {servers[1]}
    assert psutil.Process(new).ppid() == zygote
    assert gone(victim)  # reaped by the zygote, its parent: no zombie left
    async with Session(node, [whoami]) as comp:
        seen = await comp.run_result(whoami)
    assert seen["ppid"] == zygote


def test_killing_the_node_leaves_no_zygote_or_server():
    node = NodeProcess(cpus=2)
    try:
        zygote = node.zygote_pids()
        servers = wait_for(lambda: len(node.server_pids()) == 2 and node.server_pids(), what="2 servers")
        assert len(zygote) == 1
        pids = zygote + servers
        node.kill(signal.SIGKILL)
        node.proc.wait(30)
        wait_for(lambda: all(gone(pid) for pid in pids), timeout=10, what="zygote and servers to die")
    finally:
        node.stop()


def test_zygote_killed_servers_die_and_are_spawned():
    node = NodeProcess(cpus=2)
    try:
        zygote = node.zygote_pids()[0]
        servers = wait_for(lambda: len(node.server_pids()) == 2 and node.server_pids(), what="2 servers")
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: all(gone(pid) for pid in servers + [zygote]), timeout=10, what="servers to die")
        # The node goes on with spawned servers.
        after = wait_for(lambda: (lambda p: len(p) == 2 and not set(p) & set(servers) and p)(node.server_pids()),
                         what="spawned servers")
        assert {psutil.Process(pid).ppid() for pid in after} == {node.proc.pid}
        assert node.proc.poll() is None
    finally:
        node.stop()


@pytest.mark.parametrize("how", [{"args": ["--no_fork"]}, {"env": {"DISPYCOS_NO_FORK": "1"}}],
                         ids=["option", "environment"])
@pytest_twisted.ensureDeferred
async def test_no_fork_spawns_servers(fresh_node, how):
    node = fresh_node(cpus=2, **how)
    assert node.zygote_pids() == []
    servers = wait_for(lambda: len(node.server_pids()) == 2 and node.server_pids(), what="2 servers")
    for pid in servers:
        proc = psutil.Process(pid)
        assert proc.ppid() == node.proc.pid
        assert "dispycos.server" in " ".join(proc.cmdline())
    async with Session(node, [whoami]) as comp:
        seen = await comp.run_result(whoami)
    assert seen["ppid"] == node.proc.pid
    assert seen["nodetap"] is False
