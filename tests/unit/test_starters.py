"""
Fast tier: the server pool's starters (dispycos.node.starters) and a slot with a
fake starter, in memory (MemoryReactorClock; the zygote is the test, at the
other end of a socket pair). No process is started.
"""

import json
import os
import signal
import socket

import pytest
from twisted.internet import error
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python import failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from dispycos.node import zygote
from dispycos.node.serverpool import ServerSlot
from dispycos.node.starters import CHILD_FDS, IServerStarter, SpawnStarter, ZygoteStarter, _reason


@implementer(IServerStarter)
class FakeStarter:
    def __init__(self):
        self.started = []
        self.stopped = False

    def start(self, protocol, args, env):
        self.started.append((protocol, list(args), dict(env)))

    def stop(self):
        self.stopped = True


class FakeNode:
    debug = False
    twisted_tls = False
    sched_normal = True
    max_file_size = 0
    tls_files = ()

    def __init__(self, reactor):
        self.reactor = reactor
        self.ended = []

    def server_ended(self, slot, expected, reason):
        self.ended.append((slot.index, expected, reason))


class Recorder(ProcessProtocol):
    def __init__(self):
        self.data = []
        self.ended = None
        self.pid_at_connect = None

    def connectionMade(self):
        self.pid_at_connect = self.transport.pid

    def childDataReceived(self, fd, data):
        self.data.append((fd, data))

    def processEnded(self, reason):
        self.ended = reason


def test_starters_provide_the_interface():
    reactor = MemoryReactorClock()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert verifyObject(IServerStarter, SpawnStarter(reactor))
        assert verifyObject(IServerStarter, ZygoteStarter(reactor, zygote.Handle(1, a)))
    finally:
        a.close()
        b.close()


def test_spawn_starter_runs_a_new_interpreter():
    calls = []
    starter = SpawnStarter(MemoryReactorClock(), spawn=lambda *a, **kw: calls.append((a, kw)))
    proto = Recorder()
    starter.start(proto, ["--index", "1"], {"A": "1"})
    ((args, kw),) = calls
    assert args[0] is proto
    assert args[2][2:] == ["-m", "dispycos.server", "--index", "1", "--parent", str(os.getpid())]
    assert args[2][1] == "-u"
    assert kw == {"env": {"A": "1"}, "childFDs": CHILD_FDS}


def test_slot_starts_through_its_starter(monkeypatch):
    monkeypatch.setenv("DISPYCOS_SECRET", "s3cret")
    monkeypatch.setenv("DISPYCOS_KEEP", "yes")
    reactor = MemoryReactorClock()
    starter = FakeStarter()
    slot = ServerSlot(FakeNode(reactor), 2, "127.0.0.1", 0, starter=starter)
    slot.spawn()
    ((proto, args, env),) = starter.started
    assert proto is slot and slot.running
    assert args[:6] == ["--index", "2", "--host", "127.0.0.1", "--port", "0"]
    assert "--sched_normal" in args
    assert "--parent" not in args  # the starter knows the parent
    assert "DISPYCOS_SECRET" not in env and env["DISPYCOS_KEEP"] == "yes"
    # Not connected yet (a fork not reported): signalling it is a no-op, not an error.
    slot.signal(signal.SIGKILL)


def test_slot_lifecycle_with_a_fake_transport():
    reactor = MemoryReactorClock()
    node = FakeNode(reactor)
    slot = ServerSlot(node, 1, "127.0.0.1", 0, starter=FakeStarter())
    slot.spawn()
    ready = []
    slot.when_ready().addCallback(ready.append)

    class Transport:
        pid = 4242
        closed = []

        def closeStdin(self):
            self.closed.append(0)

        def writeToChild(self, fd, data):
            pass

    slot.makeConnection(Transport())
    assert slot.pid == 4242 and Transport.closed == [0]
    slot._ready(40001, 4242)
    assert ready == [slot] and slot.port == 40001
    slot.processEnded(failure.Failure(error.ProcessTerminated(None, signal.SIGKILL, signal.SIGKILL)))
    ((index, expected, reason),) = node.ended
    assert (index, expected) == (1, False)
    assert reason.value.signal == signal.SIGKILL
    assert not slot.running and slot.wanted_port == 40001  # a restart keeps its port


class FakeProcess:
    """A connected server process's transport, recording what the slot does to it."""

    def __init__(self, pid):
        self.pid = pid
        self.closed = []
        self.signals = []

    def closeChildFD(self, fd):
        self.closed.append(fd)

    def closeStdin(self):
        self.closed.append(0)

    def writeToChild(self, fd, data):
        pass

    def signalProcess(self, sig):
        self.signals.append(sig)


def test_slot_stopped_before_its_process_is_connected():
    # A forked server is connected once the zygote reports its pid, some
    # milliseconds after spawn(): a stop() in between (a node told to stop
    # while replacing a closed computation's servers) must not wait for its
    # kill at the end of the grace, and must not touch the process before.
    reactor = MemoryReactorClock()
    node = FakeNode(reactor)
    slot = ServerSlot(node, 1, "127.0.0.1", 0, starter=FakeStarter())
    slot.spawn()
    first = FakeProcess(4242)
    slot.makeConnection(first)
    slot.processEnded(failure.Failure(error.ProcessDone(0)))
    slot.spawn()  # its replacement, not connected yet
    assert slot.transport is None and slot.pid is None
    stopped = []
    slot.stop(terminate=True, grace=5).addCallback(stopped.append)
    assert first.closed == [0] and first.signals == []  # the ended predecessor is left alone
    second = FakeProcess(4243)
    slot.makeConnection(second)
    assert second.closed == [0, 3]  # no stdin, and the control pipe closed at once: it exits
    assert second.signals == []
    slot.processEnded(failure.Failure(error.ProcessTerminated(1, None, 1 << 8)))
    assert stopped == [None]
    assert node.ended[-1][:2] == (1, True)  # an expected exit
    assert reactor.getDelayedCalls() == []  # the kill was cancelled, never needed


def test_slot_kill_asked_before_its_process_is_connected_is_delivered():
    reactor = MemoryReactorClock()
    slot = ServerSlot(FakeNode(reactor), 1, "127.0.0.1", 0, starter=FakeStarter())
    slot.spawn()
    slot.stop(terminate=True, grace=5)
    reactor.advance(5)  # the grace ran out before the process was connected
    proc = FakeProcess(4242)
    slot.makeConnection(proc)
    assert proc.closed == [0, 3] and proc.signals == [signal.SIGKILL]


@pytest.mark.parametrize("status, kind, code, sig", [
    (0, error.ProcessDone, 0, None),
    (3 << 8, error.ProcessTerminated, 3, None),
    (signal.SIGKILL, error.ProcessTerminated, None, signal.SIGKILL),
])
def test_reason_of_a_waitpid_status(status, kind, code, sig):
    reason = _reason(status)
    assert type(reason.value) is kind
    assert reason.value.exitCode == code and reason.value.signal == sig


class FakeZygote:
    """The test's end of the zygote socket."""

    def __init__(self):
        self.node_end, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def receive(self):
        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 18, 8)
        return json.loads(data), fds

    def send(self, msg):
        self.sock.send(json.dumps(msg).encode())

    def close(self):
        self.sock.close()


def pump(proc):
    """Do what a reactor would for the pipes of C{proc} (a ForkedProcess) until none is ready."""
    import select

    for _ in range(20):
        if not proc.pipes:
            return
        for fd, pipe in list(proc.pipes.items()):
            if pipe.disconnecting:
                why = pipe.doWrite()
            elif CHILD_FDS[fd] == "r" and select.select([pipe.fileno()], [], [], 0)[0]:
                why = pipe.doRead()
            else:
                continue
            if why:
                pipe.connectionLost(failure.Failure(why))


def read_zygote(starter):
    why = starter._reader.doRead()
    if why:
        starter._reader.connectionLost(failure.Failure(why))


def test_zygote_starter_forks_through_the_zygote():
    reactor = MemoryReactorClock()
    z = FakeZygote()
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=FakeStarter())
    proto = Recorder()
    starter.start(proto, ["--index", "1"], {"A": "1"})
    msg, fds = z.receive()
    assert msg["args"] == ["--index", "1"] and msg["env"] == {"A": "1"}
    assert len(fds) == 5
    stdin, stdout, stderr, fd3, fd4 = fds
    assert os.read(stdin, 1) == b""  # the node closed its end: no stdin, as today
    assert proto.transport is None  # connected once the zygote says which pid
    z.send({"pid": 12345, "token": msg["start"]})
    read_zygote(starter)
    assert proto.pid_at_connect == 12345
    proc = proto.transport
    os.write(fd4, b"amp")
    os.write(stdout, b"line\n")
    pump(proc)
    assert sorted(proto.data) == [(1, b"line\n"), (4, b"amp")]
    proc.writeToChild(3, b"to server")
    proc.pipes[3].doWrite()
    assert os.read(fd3, 100) == b"to server"
    for fd in fds:
        os.close(fd)
    pump(proc)
    assert proto.ended is None  # pipes closed, but the exit status is not known yet
    z.send({"exit": 12345, "status": 3 << 8})
    read_zygote(starter)
    pump(proc)
    assert isinstance(proto.ended.value, error.ProcessTerminated) and proto.ended.value.exitCode == 3
    with pytest.raises(error.ProcessExitedAlready):
        proc.signalProcess("KILL")
    starter.stop()
    z.close()


def test_slot_stopped_while_the_zygote_forks_its_server():
    # The same with the zygote starter, the zygote being the test: the fork is
    # reported after stop(); the server then reads the end of its fd 3 at once.
    reactor = MemoryReactorClock()
    z = FakeZygote()
    node = FakeNode(reactor)
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=FakeStarter())
    slot = ServerSlot(node, 1, "127.0.0.1", 0, starter=starter)
    slot.spawn()
    msg, fds = z.receive()
    stopped = []
    slot.stop(terminate=True, grace=5).addCallback(stopped.append)
    z.send({"pid": 2 ** 22 + 7, "token": msg["start"]})  # a pid no process has (beyond pid_max)
    read_zygote(starter)
    proc = slot.transport
    pump(proc)
    stdin, stdout, stderr, fd3, fd4 = fds
    os.set_blocking(fd3, False)
    assert os.read(fd3, 100) == b""  # the end of the pipe (not "nothing yet"): what makes a server exit
    for fd in fds:
        os.close(fd)
    z.send({"exit": 2 ** 22 + 7, "status": 1 << 8})
    read_zygote(starter)
    pump(proc)
    assert stopped == [None]
    assert node.ended[-1][:2] == (1, True)
    assert reactor.getDelayedCalls() == []
    starter.stop()
    z.close()


def test_zygote_gone_falls_back_and_ends_its_servers():
    reactor = MemoryReactorClock()
    z = FakeZygote()
    fallback = FakeStarter()
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=fallback)
    running, pending = Recorder(), Recorder()
    starter.start(running, ["--index", "1"], {})
    msg, fds = z.receive()
    z.send({"pid": 2 ** 22 + 7, "token": msg["start"]})  # a pid no process has (beyond pid_max)
    read_zygote(starter)
    starter.start(pending, ["--index", "2"], {"B": "2"})
    _, pending_fds = z.receive()
    z.close()  # the zygote died
    read_zygote(starter)
    assert not starter.alive
    assert fallback.started == [(pending, ["--index", "2"], {"B": "2"})]
    for fd in fds + pending_fds:
        os.close(fd)
    pump(running.transport)
    assert running.ended.value.signal == signal.SIGKILL
    # Later starts spawn.
    later = Recorder()
    starter.start(later, ["--index", "3"], {})
    assert fallback.started[-1][0] is later


def test_zygote_fork_error_falls_back():
    reactor = MemoryReactorClock()
    z = FakeZygote()
    fallback = FakeStarter()
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=fallback)
    proto = Recorder()
    starter.start(proto, ["--index", "1"], {})
    msg, fds = z.receive()
    z.send({"error": "OSError: no more processes", "token": msg["start"]})
    read_zygote(starter)
    assert fallback.started == [(proto, ["--index", "1"], {})]
    assert starter.alive
    for fd in fds:
        os.close(fd)
    starter.stop()
    z.close()


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, True),
    (["--no_fork"], {}, False),
    ([], {"DISPYCOS_NO_FORK": "1"}, False),
    ([], {"DISPYCOS_NO_FORK": "0"}, True),
    (["--twisted_tls"], {}, False),
    (["--save_config", "x"], {}, False),
])
def test_when_the_node_forks(argv, env, expected, monkeypatch):
    monkeypatch.setattr(zygote, "fork_available", lambda: True)
    monkeypatch.delitem(__import__("sys").modules, "twisted.internet.reactor", raising=False)
    assert zygote.wanted(argv, env) is expected


def test_zygote_gone_during_shutdown_is_no_warning():
    # A SIGTERM to the node's process group ends the zygote too, maybe before the node stops
    # its starter: that is no "is gone" warning.
    from twisted.logger import capturedLogs

    reactor = MemoryReactorClock()
    z = FakeZygote()
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=FakeStarter())
    for f, args, kw in reactor.triggers["before"]["shutdown"]:
        f(*args, **kw)
    z.close()
    with capturedLogs() as events:
        read_zygote(starter)
    assert not starter.alive
    assert [e for e in events if "is gone" in e.get("log_format", "")] == []


def test_zygote_gone_while_running_warns():
    from twisted.logger import capturedLogs

    reactor = MemoryReactorClock()
    z = FakeZygote()
    starter = ZygoteStarter(reactor, zygote.Handle(99999, z.node_end), fallback=FakeStarter())
    z.close()
    with capturedLogs() as events:
        read_zygote(starter)
    assert [e for e in events if "is gone" in e.get("log_format", "")] != []
