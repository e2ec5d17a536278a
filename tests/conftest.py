"""
Fixtures that start real dispycos processes on 127.0.0.1 and stop them by PID.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from dispycos import Computation, Scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_for_children(tmpdir=None):
    """
    The environment for child processes: this checkout first on the path;
    with C{tmpdir}, their temporary files (a client's directory for files
    coming back) go there, so a child the test kills leaves none behind.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in sys.path if p])
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def stop_node_process(proc, log, dest, grace=15):
    """
    Stop a node started in a session of its own: TERM by PID, then KILL of
    its process group after C{grace} seconds; close its log, remove C{dest}.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    log.close()
    shutil.rmtree(dest, ignore_errors=True)


class Session:
    """A private scheduler connected to one node, and a computation on it (async with)."""

    def __init__(self, node, components, **kw):
        self.scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
        self.comp = Computation(components, **kw)

    async def __aenter__(self):
        await self.comp.schedule(timeout=30)
        return self.comp

    async def __aexit__(self, *exc):
        await self.comp.close(terminate=True)
        await self.scheduler.close()


class NodeProcess:
    """A dispycosnode started for a test; C{stop()} ends it by its PID."""

    def __init__(self, cpus=2, secret=None, args=(), command=None, host="127.0.0.1", env=None):
        self.secret = secrets.token_hex(8) if secret is None else secret
        self.dest = tempfile.mkdtemp(prefix="dispycos-test-node-")
        self.ready_file = os.path.join(self.dest, "ready")
        self.log_path = os.path.join(self.dest, "node.log")
        cmd = command or [sys.executable, "-m", "dispycos.scripts"]
        cmd = list(cmd) + ["-c", str(cpus), "-i", host, "--tcp_ports", "0",
                           "--dest_path", self.dest, "--ready_file", self.ready_file, "--daemon"] + list(args)
        env = dict(env_for_children(), **(env or {}))
        env["DISPYCOS_SECRET"] = self.secret
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.dest,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dispycosnode did not start:\n" + self.output())
            time.sleep(0.05)
        try:
            self.location = ""
            while not self.location:  # the file may exist before it is written
                with open(self.ready_file) as f:
                    self.location = f.read().strip()
                if time.monotonic() > deadline:
                    raise RuntimeError("empty ready file")
                time.sleep(0.02)
            self.port = int(self.location.rsplit(":", 1)[1])
        except Exception:
            self.stop()
            raise
        self.node_dir = os.path.join(self.dest, "node-%d" % self.port)

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def server_pids(self):
        import psutil

        try:
            return sorted(c.pid for c in psutil.Process(self.proc.pid).children() if "dispycos.server" in " ".join(c.cmdline()))
        except psutil.Error:
            return []

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self):
        """Stop the node by PID (TERM, then KILL of its process group); remove its files."""
        stop_node_process(self.proc, self.log, self.dest)


@pytest.fixture(scope="module")
def node():
    """A node with 2 servers, shared by the tests of a module."""
    n = NodeProcess(cpus=2)
    yield n
    n.stop()


@pytest.fixture
def fresh_node():
    """A node of the test's own (for tests that kill it)."""
    nodes = []

    def make(**kw):
        n = NodeProcess(**kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()
