"""
Forked servers (SPEC 6.6, dispycos.node.zygote): a dispycosnode forks its servers
from a zygote it forked before its reactor; they die with it; --no_fork and
DISPYCOS_NO_FORK=1 spawn them as before. Real processes.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import pytest_twisted

from dispycos import Computation, Scheduler, config

from .conftest import NodeProcess, Session, env_for_children


def whoami():
    import gc
    import os
    import sys

    from dispycos.node import sharing

    # dispycos.node.tap is the node's command line: a spawned server never imports it,
    # a forked one has it from the zygote, which imported it before the fork.
    return {"pid": os.getpid(), "ppid": os.getppid(), "nodetap": "dispycos.node.tap" in sys.modules,
            "reactor_running": __import__("twisted.internet.reactor").internet.reactor.running,
            # what dispycos.node.sharing.prepare_fork left before the forks (frozen objects, fillers)
            "frozen": gc.get_freeze_count(), "fillers": len(sharing._fillers)}


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


def open_fd(pid, fd):
    """What fd C{fd} of process C{pid} is ("pipe:[123]", a path), or None if it is not open."""
    try:
        return os.readlink("/proc/%d/fd/%s" % (pid, fd))
    except OSError:
        return None


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
    # A server holds its own pipes only, none of the node's standard streams
    # (inherited through the zygote, they would keep the node's parent waiting).
    node_std = {open_fd(node.proc.pid, fd) for fd in (0, 1, 2)} - {"/dev/null", None}
    for pid in servers:
        held = {open_fd(pid, fd) for fd in os.listdir("/proc/%d/fd" % pid)}
        assert not held & node_std, (pid, held & node_std)
    async with Session(node, [whoami]) as comp:
        seen = await comp.run_result(whoami)
    assert seen["pid"] in servers
    assert seen["ppid"] == zygote
    assert seen["nodetap"] is True
    assert seen["reactor_running"] is True
    assert seen["frozen"] > 10000 and seen["fillers"] > 0, seen
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


def test_a_stopped_node_reaps_its_zygote():
    """
    SIGTERM: the node stops its servers and waits for its zygote before it
    exits, so no dead zygote is left to init (which not every container's
    first process reaps).
    """
    node = NodeProcess(cpus=1)
    try:
        zygote = node.zygote_pids()
        assert len(zygote) == 1
        wait_for(lambda: len(node.server_pids()) == 1, what="1 server")
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
        with pytest.raises(psutil.NoSuchProcess):  # not even a zombie
            psutil.Process(zygote[0]).status()
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


def square(n):
    return n * n


@pytest.mark.parametrize("attempt", range(3))  # a race: a few tries to lose it
@pytest_twisted.ensureDeferred
async def test_node_stopped_while_replacements_are_forked_exits_at_once(fresh_node, attempt):
    # A closed computation's servers are replaced at once: SIGTERM right after the close
    # (what a LocalCluster's stop does) finds forks the zygote has not reported yet. Those
    # servers must be stopped as soon as they are, not killed when stop's grace runs out.
    node = fresh_node(cpus=3)
    wait_for(lambda: len(node.server_pids()) == 3, what="3 servers")
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([square])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_result(square, 3) == 9
        await comp.close(terminate=True)
        started = time.monotonic()
        node.kill(signal.SIGTERM)
    finally:
        await scheduler.close()
    code = node.proc.wait(30)
    took = time.monotonic() - started
    assert code == 0, node.output()
    assert took < config.ServerKillGrace - 1, "%.1f s to stop:\n%s" % (took, node.output())


#: A node's server pool in miniature, with a real zygote and a real forked
#: server: the zygote is stopped (SIGSTOP) while it is asked for the server,
#: the slot is stopped, then the zygote goes on and reports the fork.
STOPPED_BEFORE_FORK = """
import os, signal, sys, time
from dispycos.node import zygote
zygote.preload()
handle = zygote.prefork()  # as dispycosnode does: before the reactor
from dispycos import _lean
_lean.import_twisted()
from twisted.internet import defer, task
from dispycos.node.serverpool import ServerSlot
from dispycos.node.starters import ZygoteStarter

GRACE = float(sys.argv[1])

class Node:
    debug = False
    log_format = "text"
    twisted_tls = False
    sched_normal = True
    max_file_size = 0
    tls_files = ()

    def __init__(self, reactor):
        self.reactor = reactor

    def server_ended(self, slot, expected, reason):
        print("ended expected=%s pid=%s" % (expected, slot.pid), flush=True)

@defer.inlineCallbacks
def main(reactor):
    starter = ZygoteStarter(reactor, handle)
    slot = ServerSlot(Node(reactor), 1, "127.0.0.1", 0, starter=starter)
    os.kill(handle.pid, signal.SIGSTOP)
    slot.spawn()
    started = time.monotonic()
    stopped = slot.stop(terminate=True, grace=GRACE)
    reactor.callLater(0.3, os.kill, handle.pid, signal.SIGCONT)
    yield stopped
    print("stopped after %.2f s" % (time.monotonic() - started), flush=True)
    starter.stop()

task.react(main)
"""


def test_server_stopped_before_the_zygote_forked_it_exits_once_forked(tmp_path):
    grace = 20
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_BEFORE_FORK, str(grace)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env_for_children(tmp_path),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its zygote and server die with it (PR_SET_PDEATHSIG)
            proc.wait()
    assert proc.returncode == 0, out
    (ended,) = [line for line in out.splitlines() if line.startswith("ended ")]
    assert ended.startswith("ended expected=True pid=") and ended != "ended expected=True pid=None", out
    (stopped,) = [line for line in out.splitlines() if line.startswith("stopped after ")]
    took = float(stopped.split()[2])
    # Forked, told to exit at once, gone: well before the kill at the end of the grace.
    assert took < grace / 4, out
