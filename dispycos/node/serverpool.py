# -*- test-case-name: tests.test_core -*-
"""
The node's server processes: starting them (forked by the zygote or spawned,
see L{dispycos.node.starters}) with AMP on pipes (fds 3 and 4), noticing their
death at once, and stopping them (pipe close, then SIGKILL).
"""

import os
import signal
import sys

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp

from dispycos import logs, metrics
from dispycos.node.starters import SpawnStarter
from dispycos.protocol import commands

_FD_TO_CHILD, _FD_FROM_CHILD = 3, 4


class _PipeAddress:
    def __str__(self):
        return "pipe"


class _PipeTransport:
    """Adapts a process transport to what AMP expects of a transport."""

    def __init__(self, process):
        self._process = process

    def write(self, data):
        self._process.writeToChild(_FD_TO_CHILD, data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self._process.closeChildFD(_FD_TO_CHILD)

    abortConnection = loseConnection

    def getPeer(self):
        return _PipeAddress()

    getHost = getPeer


class _ControlAMP(amp.AMP):
    def __init__(self, slot):
        super().__init__()
        self.slot = slot

    @commands.Ready.responder
    def _ready(self, port, pid):
        self.slot._ready(port, pid)
        return {}

    @commands.Busy.responder
    def _busy(self, tasks):
        self.slot.tasks = tasks
        note = getattr(self.slot.node, "note_activity", None)
        if note is not None and tasks:
            note()
        return {}

    @commands.ServerCounts.responder
    def _counts(self, counts):
        metrics.server_reported(self.slot, counts)
        return {}

    @commands.CloseRequest.responder
    def _close_request(self, node, terminate, restart):
        self.slot.node.close_request(self.slot, node, terminate, restart)
        return {}


def server_environment(environ=None):
    """
    The environment a server process starts with: the node's, less every
    C{DISPYCOS_*SECRET*} variable (servers and their tasks never see the
    node's secret: a task could read it from its environment).
    """
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not (k.startswith("DISPYCOS_") and "SECRET" in k)}


class ServerSlot(ProcessProtocol):
    """
    One server process of a node (and its successors after restarts).

    @ivar index: the server's number on its node (1, 2, ...).
    @ivar port: the TCP port it listens on (0 until ready when dynamic).
    @ivar ready: a Deferred firing once the process listens, or None when
        it is running and ready.
    """

    log = Logger()

    def __init__(self, node, index, host, port, spawner=None, starter=None):
        self.node = node
        self.index = index
        self.host = host
        self.original_port = port
        self.wanted_port = port
        self.port = port
        self.pid = None
        self.control = None
        self.running = False
        self.is_ready = False
        self.expect_exit = False
        #: A signal asked for before the starter connected the process (delivered then).
        self._pending_signal = None
        self._ready_waiters = []
        self._ended_waiters = []
        #: An IServerStarter; C{spawner} (as C{reactor.spawnProcess}) for a spawning one.
        self._starter = starter or SpawnStarter(node.reactor, spawner)
        self._out = b""
        self._stdout = b""
        self.tasks = 0
        #: What the server process reported of its counts (L{dispycos.metrics.FIELDS} order), or None.
        self.counts = None

    # -- life cycle ---------------------------------------------------------------

    def server_args(self):
        """The server's command-line arguments (the starter adds C{--parent})."""
        args = [
            "--index", str(self.index),
            "--host", self.host,
            "--port", str(self.wanted_port),
        ]
        if self.node.debug:
            args.append("--debug")
        if getattr(self.node, "log_format", "text") != "text":
            args += ["--log_format", self.node.log_format]
        for flag in ("twisted_tls", "sched_normal"):
            if getattr(self.node, flag, False):
                args.append("--" + flag)
        if getattr(self.node, "max_file_size", 0):
            args += ["--max_file_size", str(self.node.max_file_size)]
        for option, path in zip(("--certfile", "--keyfile", "--cafile"), getattr(self.node, "tls_files", ())):
            if path:
                args += [option, os.path.abspath(path)]
        return args

    def spawn(self):
        """Start this slot's server process with the pool's starter (see L{dispycos.node.starters})."""
        self.is_ready = False
        self.expect_exit = False
        self._pending_signal = None
        # Until the starter connects the new process (at once when spawned, once
        # the zygote reports the fork when forked) there is none to talk to: not
        # the ended predecessor's transport, nor its pid.
        self.transport = None
        self.pid = None
        env = server_environment()
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._starter.start(self, self.server_args(), env)
        self.running = True

    def connectionMade(self):
        self.control = _ControlAMP(self)
        self.control.makeConnection(_PipeTransport(self.transport))
        self.pid = self.transport.pid
        self.transport.closeStdin()
        started = getattr(self.node, "server_started", None)
        if started is not None:
            started(self)
        # A stop() (or its kill) that came before the process was connected
        # takes effect now, rather than when stop's grace runs out.
        if self.expect_exit:
            self._close_control()
        sig, self._pending_signal = self._pending_signal, None
        if sig is not None:
            self.signal(sig)

    def _ready(self, port, pid):
        # A restarted server keeps its location (clients and the scheduler know it).
        self.port = self.wanted_port = port
        self.pid = pid
        self.is_ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def when_ready(self):
        """Deferred firing with this slot once its process listens."""
        if self.is_ready:
            return defer.succeed(self)
        d = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def childDataReceived(self, fd, data):
        if fd == _FD_FROM_CHILD:
            self.control.dataReceived(data)
        elif fd == 1:
            # Tasks' prints appear on the node's stdout, as in the original,
            # whole lines at a time so servers' lines do not interleave.
            self._stdout += data
            if b"\n" in self._stdout:
                complete, _, self._stdout = self._stdout.rpartition(b"\n")
                self._write_stdout(complete + b"\n")
        else:
            self._out += data
            *lines, self._out = self._out.split(b"\n")
            json_records = getattr(self.node, "log_format", "text") == "json"
            for line in lines:
                text = line.decode("utf-8", "replace")
                event = logs.server_event(self.index, text) if json_records else None
                if event is not None:
                    self.log.observer(event)  # the server's record, as the node's
                elif not json_records or text.strip("\x1e"):
                    self.log.info("server {i}: {line}", i=self.index, line=text)

    def _write_stdout(self, data):
        if getattr(self.node, "log_format", "text") == "json":
            # A JSON log stream has nothing but records: what tasks printed is logged line by line.
            for line in data.decode("utf-8", "replace").splitlines():
                self.log.info("server {i} output: {line}", i=self.index, line=line)
            return
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except Exception:
            pass

    def processEnded(self, reason):
        if self._stdout:
            self._write_stdout(self._stdout + b"\n")
            self._stdout = b""
        if not self.is_ready and self.original_port == 0:
            self.wanted_port = 0  # its port may have been taken meanwhile
        self.running = False
        self.is_ready = False
        self.tasks = 0
        if getattr(self.node, "retired_counts", None) is not None:
            metrics.server_ended(self.node, self)
        if self.control is not None:
            self.control.connectionLost(reason)
            self.control = None
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(reason)
        ended, self._ended_waiters = self._ended_waiters, []
        for d in ended:
            d.callback(None)
        expected, self.expect_exit = self.expect_exit, False
        self.node.server_ended(self, expected, reason)

    def when_ended(self):
        if not self.running:
            return defer.succeed(None)
        d = defer.Deferred()
        self._ended_waiters.append(d)
        return d

    def call(self, command, **kw):
        if self.control is None or not self.is_ready:
            return defer.fail(error.ConnectionDone("server %d is not running" % self.index))
        return self.control.callRemote(command, **kw)

    def signal(self, sig):
        """Send C{sig} to the server process (once it is connected, if it is not yet)."""
        if not self.running:
            return
        if self.transport is None:
            self._pending_signal = sig
            return
        try:
            self.transport.signalProcess(sig)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _close_control(self):
        """Close the node's end of fd 3: the server exits when it reads the end of it."""
        if self.transport is None:
            return  # not connected yet: connectionMade closes it (expect_exit)
        try:
            self.transport.closeChildFD(_FD_TO_CHILD)
        except Exception:
            pass

    @defer.inlineCallbacks
    def stop(self, terminate=True, grace=None):
        """
        Close the server: ask it to end its tasks (C{terminate}) or wait for
        them, and exit; kill it if it has not exited after C{grace} seconds
        (None, the default: wait as long as its tasks run). Fires once it is gone.
        """
        if not self.running:
            return
        self.expect_exit = True
        ended = self.when_ended()
        reactor = self.node.reactor
        killer = reactor.callLater(grace, self.signal, signal.SIGKILL) if grace is not None else None
        if self.is_ready:
            try:
                yield self.call(commands.Close, terminate=terminate)
            except Exception:
                pass
        if self.running:
            # Not connected yet (a fork the zygote has not reported): connectionMade closes it.
            self._close_control()
        yield ended
        if killer is not None and killer.active():
            killer.cancel()
