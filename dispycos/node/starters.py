# -*- test-case-name: tests.test_starters -*-
"""
How a node starts its server processes: the seam L{IServerStarter} (as
ampoule's C{IStarter}), injected into the server pool.

  - L{SpawnStarter}: a new interpreter per server (C{python -u -m
    dispycos.server ...} with C{reactor.spawnProcess}) - the fallback, and
    what C{--no_fork} or C{DISPYCOS_NO_FORK=1} choose;
  - L{ZygoteStarter}: a fork of the node's zygote (L{dispycos.node.zygote}) per
    server, the default of C{dispycosnode} on Linux.

Either way the server is driven by the same C{ProcessProtocol} (the slot):
C{connectionMade} with a transport whose C{pid}, C{writeToChild},
C{closeChildFD}, C{closeStdin} and C{signalProcess} work as a spawned
process's do, C{childDataReceived} for fds 1, 2 and 4, and C{processEnded}
once the server has exited (its status: reported by the zygote, its parent)
and its pipes are closed.
"""

import json
import os
import signal
import socket
import sys

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python import failure
from zope.interface import Interface, implementer

#: What a server's fds are, as spawnProcess's childFDs: "w" the node writes, "r" it reads.
CHILD_FDS = {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}


class IServerStarter(Interface):
    """Starts server processes for a node's server pool."""

    def start(protocol, args, env):
        """
        Start C{python -m dispycos.server} with the arguments C{args} (a list
        of strings, without C{--parent}) and the environment C{env}, driven by
        C{protocol} (an C{IProcessProtocol}): fds as L{CHILD_FDS}.

        The protocol may be connected after C{start} returns (a forked server
        once the zygote reports its pid; a spawned one at once): until then
        it has no transport, and what it is asked to do to the process (a
        stop, a signal) waits for C{makeConnection}.
        """

    def stop():
        """
        The node is stopping: release what this starter holds (its zygote);
        None, or a Deferred firing once that is done.
        """


def _reason(status):
    """The Failure C{processEnded} gets for a C{waitpid} status (as Twisted's process does)."""
    if os.WIFEXITED(status):
        code, sig = os.WEXITSTATUS(status), None
    elif os.WIFSIGNALED(status):
        code, sig = None, os.WTERMSIG(status)
    else:
        code, sig = None, None
    if code == 0:
        return failure.Failure(error.ProcessDone(status))
    return failure.Failure(error.ProcessTerminated(code, sig, status))


@implementer(IServerStarter)
class SpawnStarter:
    """A new interpreter per server (C{spawn} defaults to C{reactor.spawnProcess})."""

    def __init__(self, reactor, spawn=None):
        self.reactor = reactor
        self._spawn = spawn

    def start(self, protocol, args, env):
        argv = [sys.executable, "-u", "-m", "dispycos.server"] + list(args) + ["--parent", str(os.getpid())]
        spawn = self._spawn or self.reactor.spawnProcess
        spawn(protocol, sys.executable, argv, env=env, childFDs=dict(CHILD_FDS))

    def stop(self):
        pass


class ForkedProcess:
    """
    The node's side of a server forked by the zygote: the transport its slot
    sees (the C{IProcessTransport} methods the pool uses).
    """

    log = Logger()

    def __init__(self, reactor, protocol, pid, fds):
        from twisted.internet import process  # the pipe readers and writers of spawned processes

        self.reactor = reactor
        self.proto = protocol
        self.pid = pid
        self.status = None
        self.pipes = {}
        for fd, ours in fds.items():
            if CHILD_FDS[fd] == "w":
                self.pipes[fd] = process.ProcessWriter(reactor, self, fd, ours)
            else:
                self.pipes[fd] = process.ProcessReader(reactor, self, fd, ours)
        for pipe in self.pipes.values():
            pipe.startReading()
        protocol.makeConnection(self)

    # -- what ProcessReader/ProcessWriter call ------------------------------------------

    def childDataReceived(self, fd, data):
        self.proto.childDataReceived(fd, data)

    def childConnectionLost(self, fd, reason):
        pipe = self.pipes.pop(fd, None)
        if pipe is not None:
            try:
                os.close(pipe.fileno())
            except OSError:
                pass
        try:
            self.proto.childConnectionLost(fd)
        except Exception:
            self.log.failure("childConnectionLost")
        self._maybe_ended()

    # -- IProcessTransport, as the pool uses it -----------------------------------------

    def writeToChild(self, fd, data):
        self.pipes[fd].write(data)

    def closeChildFD(self, fd):
        pipe = self.pipes.get(fd)
        if pipe is not None:
            pipe.loseConnection()

    def closeStdin(self):
        self.closeChildFD(0)

    def loseConnection(self):
        for fd in list(self.pipes):
            self.closeChildFD(fd)

    def signalProcess(self, sig):
        if self.status is not None:
            raise error.ProcessExitedAlready()
        if isinstance(sig, str):
            sig = getattr(signal, "SIG" + sig)
        os.kill(self.pid, sig)

    # -- from the zygote -------------------------------------------------------------------

    def exited(self, status):
        """The zygote reaped this server with C{waitpid} status C{status}."""
        if self.status is not None:
            return
        self.status = status
        for fd, pipe in list(self.pipes.items()):
            if CHILD_FDS[fd] == "w":
                pipe.loseConnection()
        self._maybe_ended()

    def _maybe_ended(self):
        # As a spawned process: processEnded once it has exited and every pipe is closed.
        if self.status is None or self.pipes or self.proto is None:
            return
        proto, self.proto = self.proto, None
        reason = _reason(self.status)
        try:
            proto.processExited(reason)
        except Exception:
            self.log.failure("processExited")
        proto.processEnded(reason)


class _ZygoteReader:
    """The node reading the zygote's socket (an IReadDescriptor)."""

    def __init__(self, starter):
        self.starter = starter

    def fileno(self):
        return self.starter.sock.fileno() if self.starter.sock is not None else -1

    def logPrefix(self):
        return "zygote"

    def doRead(self):
        return self.starter._read()

    def connectionLost(self, reason):
        self.starter._gone()


@implementer(IServerStarter)
class ZygoteStarter:
    """
    Servers forked by the zygote C{handle} (from L{dispycos.node.zygote.prefork});
    when the zygote is gone (or a fork fails) a server is spawned instead, by
    C{fallback} (a L{SpawnStarter} by default).
    """

    log = Logger()

    def __init__(self, reactor, handle, fallback=None):
        from zope.interface.declarations import directlyProvides
        from twisted.internet.interfaces import IReadDescriptor

        self.reactor = reactor
        self.handle = handle
        self.zygote_pid = handle.pid
        self.sock = handle.sock
        self.sock.setblocking(False)
        self.fallback = fallback or SpawnStarter(reactor)
        self._next = 0
        self._pending = {}  # token -> (protocol, args, env, {fd: our end})
        self._children = {}  # pid -> ForkedProcess
        self._reader = _ZygoteReader(self)
        directlyProvides(self._reader, IReadDescriptor)
        reactor.addReader(self._reader)
        # A Ctrl-C or SIGTERM to the node's process group reaches the zygote too, which may end
        # before the node stops this starter: a zygote gone during shutdown is no news.
        reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    @property
    def alive(self):
        return self.sock is not None

    def start(self, protocol, args, env):
        if self.sock is None:
            return self.fallback.start(protocol, args, env)
        ours, theirs = {}, []
        try:
            for fd in sorted(CHILD_FDS):
                r, w = os.pipe()
                if CHILD_FDS[fd] == "w":  # the node writes, the server reads
                    ours[fd], child = w, r
                else:
                    ours[fd], child = r, w
                theirs.append(child)
            self._next += 1
            token = self._next
            msg = json.dumps({"start": token, "args": list(args), "env": dict(env)}).encode()
            socket.send_fds(self.sock, [msg], theirs)
        except OSError as e:
            for fd in list(ours.values()):
                os.close(fd)
            self.log.warn("cannot ask the zygote for a server ({e}); spawning one", e=e)
            return self.fallback.start(protocol, args, env)
        finally:
            for fd in theirs:
                os.close(fd)
        # Servers read no stdin (as closeStdin at once on a spawned one).
        os.close(ours.pop(0))
        self._pending[token] = (protocol, args, env, ours)

    def _read(self):
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                return failure.Failure(e).value
            if not data:
                return error.ConnectionDone("the zygote closed its socket")
            try:
                self._message(json.loads(data))
            except Exception:
                self.log.failure("message from the zygote")
        return None

    def _message(self, msg):
        if "pid" in msg:
            protocol, _, _, ours = self._pending.pop(msg["token"])
            self._children[msg["pid"]] = ForkedProcess(self.reactor, protocol, msg["pid"], ours)
        elif "exit" in msg:
            proc = self._children.pop(msg["exit"], None)
            if proc is not None:
                proc.exited(msg["status"])
        elif "error" in msg:
            protocol, args, env, ours = self._pending.pop(msg["token"])
            for fd in ours.values():
                os.close(fd)
            self.log.warn("the zygote could not fork a server ({e}); spawning one", e=msg["error"])
            self.fallback.start(protocol, args, env)

    def _gone(self):
        """The zygote's socket closed: it is dead (its servers die with it) or we closed it."""
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        sock.close()
        if not self._stopping():
            self.log.warn("the zygote (pid {pid}) is gone; servers are spawned from now on", pid=self.zygote_pid)
        # Its servers die with it (PDEATHSIG); nobody will report their statuses.
        for pid, proc in list(self._children.items()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            proc.exited(signal.SIGKILL)  # a waitpid status: killed by SIGKILL
        self._children.clear()
        pending, self._pending = self._pending, {}
        for protocol, args, env, ours in pending.values():
            for fd in ours.values():
                os.close(fd)
            self.fallback.start(protocol, args, env)
        self._reaped = self._reap_zygote(500)

    _stopped = False
    #: Fires once the zygote is reaped (after its socket closed), else None.
    _reaped = None

    _shutdown = False

    def _shutting_down(self):
        self._shutdown = True

    def _stopping(self):
        return self._stopped or self._shutdown

    def _reap_zygote(self, tries):
        """
        A Deferred firing once the zygote is reaped, looked for every 10 ms,
        C{tries} times at most (a node that exited first would leave it to
        init, which not every container's first process does).
        """
        reaped = defer.Deferred()

        def look(left):
            try:
                pid, _ = os.waitpid(self.zygote_pid, os.WNOHANG)
            except ChildProcessError:
                pid = self.zygote_pid
            if pid != 0 or left <= 0:
                reaped.callback(None)
            else:
                self.reactor.callLater(0.01, look, left - 1)

        look(tries)
        return reaped

    def stop(self):
        """
        Close the socket: the zygote ends (and any server still alive with
        it); the Deferred returned fires once it is reaped.
        """
        self._stopped = True
        if self.sock is not None:
            self.reactor.removeReader(self._reader)
            self._gone()
        return self._reaped if self._reaped is not None else defer.succeed(None)
