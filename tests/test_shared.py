"""
The shared scheduler program with real processes: clients in this process and
in others, computations queued first come first served.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, Status

from .conftest import env_for_children
from .test_core import sleep, slow


class SchedulerProcess:
    """A `dispycos` shared scheduler process, stopped by PID."""

    def __init__(self, nodes, secret, args=()):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        env = env_for_children()
        env["DISPYCOS_SECRET"] = secret
        cmd = [sys.executable, "-c", "from dispycos.scripts import scheduler_main; scheduler_main()",
               "-i", "127.0.0.1", "-t", str(self.port), "--daemon"]
        for n in nodes:
            cmd += ["--node", n]
        # A --dest_path of its own unless the test gives one: a scheduler the test kills leaves nothing.
        self.dest = None
        if "--dest_path" not in args:
            self.dest = tempfile.mkdtemp(prefix="dispycos-test-sched-")
            os.chmod(self.dest, 0o700)
            cmd += ["--dest_path", self.dest]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.location = "127.0.0.1:%d" % self.port
        import socket as _s

        deadline = time.monotonic() + 30
        while True:
            try:
                _s.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("scheduler did not start")
                time.sleep(0.05)

    def monitor_url(self, timeout=30):
        """The address (with its token) that the --http_port monitor printed."""
        import re
        import select

        deadline = time.monotonic() + timeout
        out = b""
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                out += chunk
                printed = re.search(rb"^dispycos monitor at (\S+)$", out, re.M)
                if printed:
                    return printed.group(1).decode()
        raise AssertionError("the monitor printed no address:\n" + out.decode(errors="replace"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dest is not None:
            shutil.rmtree(self.dest, ignore_errors=True)


@pytest.fixture
def shared(fresh_node):
    node = fresh_node(cpus=2)
    sched = SchedulerProcess([node.location], node.secret)
    yield node, sched
    sched.stop()


def step(n, task=None):
    yield task.sleep(0.05)
    return n + 1


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_runs_a_computation(shared):
    node, sched = shared
    statuses = []
    comp = Computation([step], secret=node.secret, status_task=statuses.append)
    await comp.schedule(sched.location, timeout=30)
    try:
        assert len(await comp.servers()) == 2
        assert await comp.nodes() == ["127.0.0.1"]
        assert await comp.run_results(step, range(20)) == list(range(1, 21))
    finally:
        await comp.close()
    codes = [s.status for s in statuses if isinstance(s, dispycos.DispycosStatus)]
    assert codes[0] == Status.NodeDiscovered and codes[-1] == Status.ComputationClosed
    assert codes.count(Status.ServerInitialized) == 2
    assert codes.count(Status.TaskFinished) == 20


@pytest_twisted.ensureDeferred
async def test_a_killed_nodes_servers_get_no_new_task(shared):
    # Whoever hears of it first, the client (its links to the servers broken or
    # its connections to them refused: it tells the scheduler, ServerGone) or
    # the shared scheduler (the end of its node link), a new task fails instead
    # of going to a dead server.
    node, sched = shared
    comp = Computation([slow], secret=node.secret)
    await comp.schedule(sched.location, timeout=30)
    try:
        running = [await comp.run(slow, 60), await comp.run(slow, 60)]
        results = [t.result() for t in running]
        node.kill(signal.SIGKILL)
        for d in results:
            with pytest.raises(dispycos.TaskAbandoned):
                await d
        with pytest.raises(dispycos.DispycosError):
            await comp.run(slow, 1)
    finally:
        await comp.close()


@pytest_twisted.ensureDeferred
async def test_second_client_waits_for_the_first(shared):
    node, sched = shared
    first = Computation([step], secret=node.secret)
    second = Computation([step], secret=node.secret)
    await first.schedule(sched.location, timeout=30)
    d2 = second.schedule(sched.location, timeout=60)
    await sleep(1.0)
    assert not d2.called  # queued behind the first
    assert await first.run_result(step, 1) == 2
    await first.close()
    await d2
    try:
        assert await second.run_result(step, 2) == 3
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_wrong_secret_refused(shared):
    node, sched = shared
    comp = Computation([step], secret="wrong")
    with pytest.raises(dispycos.ScheduleError) as info:
        await comp.schedule(sched.location, timeout=30)
    assert "refused" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_vanished_scheduler_errbacks(shared):
    node, sched = shared
    comp = Computation([step], secret=node.secret)
    await comp.schedule(sched.location, timeout=30)
    try:
        running = [await comp.run(step, 1)]
        sched.proc.kill()
        sched.proc.wait()
        with pytest.raises(dispycos.DispycosError):
            for _ in range(100):
                rt = await comp.run(step, 1)
                await rt.result(timeout=10)
    finally:
        await comp.close()


def test_scheduler_stdin_commands_through_a_pipe(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = env_for_children()
    proc = subprocess.Popen([sys.executable, "-c", "from dispycos.scripts import scheduler_main; scheduler_main()",
                             "-i", "127.0.0.1", "-t", str(port), "--stdin_commands"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert "commands" in proc.stdout.readline()
        proc.stdin.write("status\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert "active computation: None" in line and "queued: 0" in line
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


CLIENT = r'''
import sys
import tempfile
from twisted.internet import task, defer
import dispycos

def step(n, task=None):
    yield task.sleep(600)

async def main(reactor):
    comp = dispycos.Computation([step], secret=sys.argv[2], pulse_interval=1)
    await comp.schedule(sys.argv[1], timeout=30)
    await comp.run(step, 1)
    print("ACTIVE", flush=True)
    await defer.Deferred()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


@pytest.mark.parametrize("how", ["killed", "silent"])
@pytest_twisted.ensureDeferred
async def test_dead_client_releases_nodes_for_the_next(fresh_node, tmp_path, how):
    node = fresh_node(cpus=1)
    sched = SchedulerProcess([node.location], node.secret, args=["--zombie_period", "3"])
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), sched.location, node.secret], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env_for_children(tmp_path), text=True)
    try:
        assert proc.stdout.readline().strip() == "ACTIVE"
        nxt = Computation([step], secret=node.secret)
        d = nxt.schedule(sched.location, timeout=60)
        await sleep(0.5)
        assert not d.called
        proc.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        await d
        try:
            assert await nxt.run_result(step, 5) == 6
        finally:
            await nxt.close()
    finally:
        proc.kill()
        proc.wait()
        sched.stop()


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_serves_the_monitor(fresh_node):
    import json
    import socket
    import urllib.error
    import urllib.request

    node = fresh_node(cpus=2)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    http_port = s.getsockname()[1]
    s.close()
    sched = SchedulerProcess([node.location], node.secret, args=["--http_port", str(http_port)])
    try:
        comp = Computation([step], secret=node.secret)
        await comp.schedule(sched.location, timeout=30)
        try:
            assert await comp.run_result(step, 1) == 2
            url = sched.monitor_url()
            token = url.partition("?token=")[2]
            assert url == "http://127.0.0.1:%d/?token=%s" % (http_port, token) and len(token) >= 32
            for _ in range(100):
                status = json.load(urllib.request.urlopen("http://127.0.0.1:%d/cluster_status?token=%s"
                                                          % (http_port, token), timeout=5))
                if status["nodes"] and status["nodes"][0]["servers"] == 2:
                    break
                await sleep(0.1)
            assert [n["addr"] for n in status["nodes"]] == ["127.0.0.1"]
            page = urllib.request.urlopen(url, timeout=5).read()
            assert b"<html" in page.lower()
            with pytest.raises(urllib.error.HTTPError) as refused:  # without the token
                urllib.request.urlopen("http://127.0.0.1:%d/cluster_status" % http_port, timeout=5)
            assert refused.value.code == 403
        finally:
            await comp.close()
    finally:
        sched.stop()
