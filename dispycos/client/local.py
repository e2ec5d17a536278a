# -*- test-case-name: tests.test_core -*-
"""
L{LocalCluster}: a real node as a child process on a free loopback port, with
a generated secret, plus a private scheduler: zero set-up for trying dispycos.
"""

import os
import re
import secrets
import shutil
import signal
import sys
import tempfile

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from dispycos.errors import DispycosError
from dispycos.scheduler.core import Scheduler

_READY = re.compile(rb"ready at (\S+):(\d+) with (\d+) servers")

#: How the node starts: as C{python -m dispycos.scripts}, in a session of
#: its own (a Ctrl-C to the client's process group, from a terminal or
#: Jupyter, does not reach it: the client stops it), and, on Linux, sent
#: SIGTERM if the client dies first (so it never outlives a killed client).
_NODE_MAIN = """\
import os, runpy, signal, sys
os.setsid()
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != %d:
        os.kill(os.getpid(), signal.SIGTERM)
runpy.run_module("dispycos.scripts", run_name="__main__", alter_sys=True)
"""


def _write(stream, data):
    """Copy C{data} (bytes) to C{stream}, a binary-capable file or a text-only one (a notebook's)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
    else:
        stream.write(data.decode("utf-8", "replace"))
    stream.flush()


class _NodeProcess(ProcessProtocol):
    log = Logger()

    def __init__(self, echo, debug=False):
        self.debug = debug
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.echo = echo
        self._buf = b""
        self.output = []

    def outReceived(self, data):
        if self.echo:
            _write(sys.stdout, data)
        if not self.ready.called:
            self._buf += data
            m = _READY.search(self._buf)
            if m:
                self.ready.callback((m.group(1).decode(), int(m.group(2)), int(m.group(3))))

    def errReceived(self, data):
        # The node's log: kept for error reports, shown only when debugging.
        self.output.append(data)
        del self.output[:-50]
        if self.debug:
            _write(sys.stderr, data)

    def processEnded(self, reason):
        if not self.ready.called:
            tail = b"".join(self.output).decode("utf-8", "replace")[-2000:]
            self.ready.errback(DispycosError("dispycosnode exited before it was ready:\n%s" % tail))
        self.ended.callback(None)


class LocalCluster:
    """
    A node (C{cpus} servers) in a child process and a private L{Scheduler}
    connected to it. Use C{async with LocalCluster(cpus=2):} or
    C{yield cluster.start()} ... C{yield cluster.stop()}.

    @param echo: copy the node's standard output (tasks' prints) to ours.
    @param debug: run the node with debug logging and copy its log to our stderr.
    """

    def __init__(self, cpus=2, reactor=None, echo=False, debug=False, **scheduler_options):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.cpus = cpus
        self.echo = echo
        self.debug = debug
        self.scheduler_options = scheduler_options
        self.secret = secrets.token_hex(16)
        self.scheduler = None
        self.node_location = None
        self.pid = None
        self._proc = None
        self._dir = None
        self._exit_trigger = None

    @defer.inlineCallbacks
    def start(self):
        """Start the node and the scheduler; fires with this cluster."""
        self._dir = tempfile.mkdtemp(prefix="dispycos-local-")
        argv = [sys.executable, "-c", _NODE_MAIN % os.getpid(), "-c", str(self.cpus), "-i", "127.0.0.1",
                "--tcp_ports", "0", "--dest_path", self._dir, "--daemon"]
        if self.debug:
            argv.append("-d")
        env = dict(os.environ)
        env["DISPYCOS_SECRET"] = self.secret
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = _NodeProcess(self.echo, self.debug)
        transport = self.reactor.spawnProcess(self._proc, sys.executable, argv, env=env)
        self.pid = transport.pid
        # The node is in a session of its own: stopping the reactor stops it.
        self._exit_trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        try:
            host, port, _ = yield self._proc.ready
        except Exception:
            yield self.stop()
            raise
        self.node_location = "%s:%d" % (host, port)
        self.scheduler = Scheduler(nodes=[self.node_location], secret=self.secret, reactor=self.reactor,
                                   **self.scheduler_options)
        return self

    @defer.inlineCallbacks
    def stop(self):
        """Close the scheduler, stop the node (by its PID) and remove its files."""
        trigger, self._exit_trigger = self._exit_trigger, None
        if trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass
        if self.scheduler is not None:
            yield self.scheduler.close()
            self.scheduler = None
        if self._proc is not None and not self._proc.ended.called:
            self._signal(signal.SIGTERM)
            killer = self.reactor.callLater(10, self._signal, signal.SIGKILL)
            yield self._proc.ended
            if killer.active():
                killer.cancel()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _signal(self, sig):
        try:
            self._proc.transport.signalProcess(sig)
        except (error.ProcessExitedAlready, OSError, AttributeError):
            pass

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()
        return False


class _EnvCluster:
    """A private scheduler for the nodes named in C{$DISPYCOS_NODES}."""

    def __init__(self, nodes, secret, reactor):
        self.nodes = nodes
        self.secret = secret
        self.reactor = reactor
        self.scheduler = None

    def start(self):
        self.scheduler = Scheduler(nodes=self.nodes, secret=self.secret, reactor=self.reactor)
        return defer.succeed(self)

    def stop(self):
        scheduler, self.scheduler = self.scheduler, None
        return scheduler.close() if scheduler is not None else defer.succeed(None)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()
        return False


def default_cluster(cpus=2, reactor=None, echo=True):
    """
    What the examples run on: the nodes listed in C{$DISPYCOS_NODES}
    (comma-separated C{host[:port]}, secret in C{$DISPYCOS_SECRET}) with a
    private scheduler, or else a L{LocalCluster} of C{cpus} servers.
    """
    if reactor is None:
        from twisted.internet import reactor
    nodes = [n for n in os.environ.get("DISPYCOS_NODES", "").split(",") if n.strip()]
    if nodes:
        return _EnvCluster(nodes, os.environ.get("DISPYCOS_SECRET", ""), reactor)
    return LocalCluster(cpus=cpus, reactor=reactor, echo=echo)
