"""
Fixtures that start real dispycos processes on 127.0.0.1 and stop them by PID.
(The fast in-memory tier, with no processes and no sockets, is tests/unit/.)
"""

import functools
import inspect
import os
import secrets
import shutil
import signal
import subprocess
import socket
import sys
import tempfile
import time

import pytest

from dispycos import Computation, Scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How long a test the reactor drives may wait before it fails with a TimeoutError
#: (what it awaits is cancelled, so its own cleanup runs): one test that waits forever
#: must not hold the whole run until CI's limit.
TEST_TIMEOUT = float(os.environ.get("DISPYCOS_TEST_TIMEOUT", "300"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Bound every Deferred- or coroutine-returning test by L{TEST_TIMEOUT} (pytest-twisted then runs it)."""
    test = pyfuncitem.obj
    if getattr(test, "hypothesis", None) is not None or getattr(test, "_bounded", False):
        return None

    @functools.wraps(test)
    def bounded(*args, **kwargs):
        from twisted.internet import defer, reactor

        result = test(*args, **kwargs)
        if inspect.iscoroutine(result):
            result = defer.ensureDeferred(result)
        if isinstance(result, defer.Deferred):
            result.addTimeout(TEST_TIMEOUT, reactor)
        return result

    bounded._bounded = True
    pyfuncitem.obj = bounded
    return None


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir():
    """
    A C{$XDG_RUNTIME_DIR} of the test session's own (0700), for it and every
    process it starts: the secret a program without one makes for its user
    (L{dispycos.paths.user_secret}) lands there, not in the tester's home.
    """
    saved = os.environ.get("XDG_RUNTIME_DIR")
    runtime_dir = tempfile.mkdtemp(prefix="dispycos-test-run-")
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir
    try:
        yield runtime_dir
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
        shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def default_dest_path_left_as_found():
    """
    Processes started without --dest_path (the CLI's and examples' tests)
    keep their files under the default C{<tempdir>/dispycos-<uid>}: made by
    this session, it is removed at its end (one that was there is left).
    """
    from dispycos import config

    path = config.default_dest_path()
    existed = os.path.lexists(path)
    yield path
    if not existed:
        shutil.rmtree(path, ignore_errors=True)


def free_port():
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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


def terminate_group(proc, timeout=30):
    """
    SIGTERM to C{proc} (started in a session of its own, its output piped),
    its output once it ended (within C{timeout} seconds), then SIGKILL to
    whatever is left of its process group.
    """
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return out.decode("utf-8", "replace")


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


def default_dest_path(env):
    """The default --dest_path of a child with environment C{env}."""
    return os.path.join(env.get("TMPDIR") or tempfile.gettempdir(), "dispycos-%d" % os.geteuid())


#: The unprivileged user attacks run as (nobody).
NOBODY = 65534


def run_python(code, timeout=60):
    """The Python C{code} run by a fresh interpreter with this checkout (the completed process, text output)."""
    return subprocess.run([sys.executable, "-c", code], env=env_for_children(), capture_output=True, text=True,
                          timeout=timeout)


def run_as_nobody(code, *args, timeout=60, env=None):
    """
    Run the Python C{code} (with C{sys.argv[1:]} = C{args}) as user nobody
    (C{setpriv}, no groups), with this checkout and the venv's packages on
    its path; the completed process (text output). Skips without root.
    """
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run an attacker as another user")
    child_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in sys.path if p])}
    child_env.update(env or {})
    cmd = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups", sys.executable, "-c", code]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=child_env, cwd="/")


@pytest.fixture
def shared_tmp():
    """
    A directory like /tmp (mode 1777, so user nobody may write in it),
    removed with everything in it at the end.
    """
    path = tempfile.mkdtemp(prefix="dispycos-test-shared-")
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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

    def __init__(self, cpus=2, secret=None, args=(), command=None, host="127.0.0.1", env=None, ready_file=None,
                 dest_path=True):
        self.secret = secrets.token_hex(8) if secret is None else secret
        self.dest = tempfile.mkdtemp(prefix="dispycos-test-node-")
        self.ready_file = ready_file or os.path.join(self.dest, "ready")
        self.log_path = os.path.join(self.dest, "node.log")
        cmd = command or [sys.executable, "-m", "dispycos.scripts"]
        # dest_path=False: the node's default --dest_path (its node directory is then not under self.dest).
        cmd = list(cmd) + ["-c", str(cpus), "-i", host, "--tcp_ports", "0", "--ready_file", self.ready_file,
                           "--daemon"] + (["--dest_path", self.dest] if dest_path else []) + list(args)
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
        self.node_dir = os.path.join(self.dest if dest_path else default_dest_path(env), "node-%d" % self.port)

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def server_pids(self):
        import psutil

        # Spawned servers are the node's children ("python -m dispycos.server"),
        # forked ones its zygote's (named "dispycos-server", see dispycos.node.zygote).
        pids = []
        try:
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                try:
                    if c.name() == "dispycos-server" or "dispycos.server" in " ".join(c.cmdline()):
                        pids.append(c.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            return []
        return sorted(pids)

    def zygote_pids(self):
        """The node's zygote (a list: empty when its servers are spawned)."""
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "dispycos-zygote"]
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
