"""
The node's named child services beyond discovery, /metrics and the
heartbeat: the pid file ("pidfile"), the service window ("service_window")
and the stdin console ("console"), each only when asked for; their start and
stop in the order the node had before they were children (a node on a
MemoryReactorClock with no servers, a fake starter and a fake console).
"""

import json
import os

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from dispycos.node import console as consolemod
from dispycos.protocol import auth
from dispycos.node import pidfile as pidfilemod
from dispycos.node.console import ConsoleService
from dispycos.node.nodeconfig import NodeConfig
from dispycos.node.pidfile import PidFileService
from dispycos.node.service import NodeService
from dispycos.node.service_window import ServiceWindow


class FakeStarter:
    """Starts nothing (no servers); its stop is the node's last step but the pid file's."""

    def __init__(self, events):
        self.events = events

    def stop(self):
        self.events.append("starter stopped")


class FakeConsole:
    def __init__(self, events):
        self.events = events

    def stop(self):
        self.events.append("console stopped")


def node_config(tmp_path, events, **kw):
    return NodeConfig(0, ["127.0.0.1"], [0], node_name="kids", dest_path=str(tmp_path / "dest"),
                      udp_port=0, scheduler_port=0, starter=FakeStarter(events), **kw)


@pytest.fixture
def events(monkeypatch):
    """What the node did, in order: the console and the pid file's writes and removal are recorded."""
    happened = []

    def start_console(node, require_terminal=False):
        happened.append("console started" + (" (a terminal required)" if require_terminal else ""))
        return FakeConsole(happened)

    real_write, real_remove = pidfilemod.write_pid_file, pidfilemod.remove_pid_file

    def write_pid_file(path, node):
        happened.append("pid file written")
        real_write(path, node)

    def remove_pid_file(path):
        happened.append("pid file removed")
        real_remove(path)

    monkeypatch.setattr(consolemod, "start_console", start_console)
    monkeypatch.setattr(pidfilemod, "write_pid_file", write_pid_file)
    monkeypatch.setattr(pidfilemod, "remove_pid_file", remove_pid_file)
    return happened


def recording(node, events, reactor):
    """Record the node's listening, discovery, heartbeat and service window too."""
    def wrap(obj, name, what):
        real = getattr(obj, name)

        def call(*a, **kw):
            events.append(what)
            return real(*a, **kw)

        setattr(obj, name, call)

    wrap(reactor, "listenTCP", "listening")
    wrap(node.discovery, "startService", "discovery started")
    wrap(node.discovery, "stopService", "discovery stopped")
    wrap(node.scheduler_watch, "startService", "heartbeat started")
    wrap(node.scheduler_watch, "stopService", "heartbeat stopped")
    wrap(node, "_arm_window", "service window armed")
    wrap(node, "_stop_window", "service window stopped")
    wrap(node, "_announce_ready", "ready")


def test_no_pid_file_window_or_console_unless_asked_for(tmp_path, events):
    node = NodeService(MemoryReactorClock(), node_config(tmp_path, events))
    assert [s.name for s in node] == ["discovery", "heartbeat"]
    assert node.namedServices.get("pidfile") is None
    node._write_pid_file()  # nothing to write, nothing written
    node._remove_pid_file()
    assert events == []


def test_the_children_are_named_and_in_order(tmp_path, events):
    clock = MemoryReactorClock()
    window = ServiceWindow("08:00", "18:00", "19:00", clock=clock)
    node = NodeService(clock, node_config(tmp_path, events, pid_file=str(tmp_path / "pid"), service_window=window,
                                          stdin_commands=True, metrics_port=0))
    assert [s.name for s in node] == ["discovery", "metrics", "heartbeat", "pidfile", "service_window", "console"]
    pidfile = node.getServiceNamed("pidfile")
    assert isinstance(pidfile, PidFileService) and pidfile.path == str(tmp_path / "pid") and pidfile.node is node
    console = node.getServiceNamed("console")
    assert isinstance(console, ConsoleService) and console.require_terminal is False
    assert node.getServiceNamed("service_window").node is node
    # --stdin_commands "auto" (no --daemon): a console only on a foreground terminal, looked at when it starts.
    auto = NodeService(clock, node_config(tmp_path, events, stdin_commands="auto"))
    assert [s.name for s in auto] == ["discovery", "heartbeat", "console"]
    assert auto.getServiceNamed("console").require_terminal is True


def test_start_and_stop_keep_their_order(tmp_path, events):
    """
    Start: listen, (no servers: ready at once), discovery, heartbeat, the pid
    file, the service window, the console. Stop: the console first, then the
    heartbeat and discovery; the pid file is removed last, once the servers
    (and their starter) are gone.
    """
    reactor = MemoryReactorClock()
    reactor.advance(1700000000)
    pid_path = str(tmp_path / "pid")
    window = ServiceWindow("00:00", "23:58", "23:59", clock=reactor)
    node = NodeService(reactor, node_config(tmp_path, events, pid_file=pid_path, service_window=window,
                                            stdin_commands=True))
    recording(node, events, reactor)
    node.startService()
    assert events == ["listening", "ready", "discovery started", "heartbeat started", "pid file written",
                      "service window armed", "console started"]
    assert all(s.running for s in node)
    record = json.load(open(pid_path))
    assert (record["pid"], record["name"], record["port"], record["servers"]) == (os.getpid(), "kids", 0, [])
    assert node._window_timer is not None and node._window_timer.active()
    assert isinstance(node.console, FakeConsole)

    del events[:]
    d = node.stopService()
    assert events == ["console stopped", "service window stopped", "heartbeat stopped", "discovery stopped",
                      "starter stopped", "pid file removed"]
    assert d.called and not os.path.exists(pid_path)
    assert not any(s.running for s in node)
    assert node._window_timer is None and not reactor.getDelayedCalls()


def test_a_replaced_server_rewrites_the_pid_file_while_it_runs(tmp_path, events):
    node = NodeService(MemoryReactorClock(), node_config(tmp_path, events, pid_file=str(tmp_path / "pid")))
    node._write_pid_file()  # not started: nothing written
    assert events == []
    node.startService()
    assert events == ["pid file written"]
    node._write_pid_file()  # (what a replaced server's start does)
    assert events[-1] == "pid file written"
    node.stopService()
    assert events[-1] == "pid file removed"
    node._write_pid_file()  # stopped: not written again
    assert events[-1] == "pid file removed"


def test_the_pid_file_service_stopped_alone_removes_its_file(tmp_path, events):
    """Only the node's own stop keeps the file until its servers are gone; the service stopped alone removes it."""
    pid_path = str(tmp_path / "pid")
    node = NodeService(MemoryReactorClock(), node_config(tmp_path, events, pid_file=pid_path))
    node.startService()
    assert os.path.exists(pid_path)
    node.getServiceNamed("pidfile").stopService()
    assert not os.path.exists(pid_path) and events[-1] == "pid file removed"
    node._write_pid_file()
    assert not os.path.exists(pid_path)
    node.stopService()


def test_a_pid_file_that_cannot_be_written_is_logged(tmp_path, events):
    logged = []
    node = NodeService(MemoryReactorClock(), node_config(tmp_path, events, pid_file=str(tmp_path / "no" / "pid")))
    node.log = type(node.log)(observer=logged.append)
    node.startService()  # the node starts anyway
    assert any("cannot write pid file" in e["log_format"] and e["f"].endswith("pid") for e in logged)
    node.stopService()


def test_a_console_that_does_not_start_is_none(tmp_path, events, monkeypatch):
    """--stdin_commands auto with no terminal on stdin: start_console gives None, and the node runs without."""
    asked = []
    monkeypatch.setattr(consolemod, "start_console", lambda node, require_terminal=False: asked.append(require_terminal))
    node = NodeService(MemoryReactorClock(), node_config(tmp_path, events, stdin_commands="auto"))
    node.startService()
    assert asked == [True] and node.console is None
    node.stopService()
    assert not node.getServiceNamed("console").running


def test_the_service_window_child_cancels_its_timer(tmp_path, events):
    clock = Clock()
    clock.advance(1700000000)
    node = NodeService(clock, node_config(tmp_path, events, service_window=ServiceWindow("00:00", "23:58", "23:59",
                                                                                         clock=clock)))
    child = node.getServiceNamed("service_window")
    child.startService()
    assert node.service_phase is not None and node._window_timer.active()
    child.stopService()
    assert node._window_timer is None and not clock.getDelayedCalls()


class SilentStarter(FakeStarter):
    """Starts servers that never connect (they are still starting)."""

    def start(self, protocol, args, env):
        self.events.append("server started")


def test_the_secret_is_stretched_once_the_servers_are_up_or_when_a_scheduler_asks(tmp_path, events):
    # Stretching takes ~50 ms of CPU (in a thread on a real reactor; at once on
    # this one): not while the servers start, but before a scheduler's
    # handshake needs it.
    starting = NodeService(MemoryReactorClock(), NodeConfig(
        1, ["127.0.0.1"], [0], node_name="kids", dest_path=str(tmp_path / "a"), udp_port=0, scheduler_port=0,
        secret="s", starter=SilentStarter(events)))
    starting.startService()
    assert events == ["server started"]
    assert starting._key.value is None and starting.discovery.key is None
    key = starting.keyring("scheduler", "computation 1")
    assert key == auth.key_from_secret("s") and starting.discovery.key == key
    starting.stopService()

    up = NodeService(MemoryReactorClock(), NodeConfig(
        0, ["127.0.0.1"], [0], node_name="kids", dest_path=str(tmp_path / "b"), udp_port=0, scheduler_port=0,
        secret="s", starter=FakeStarter(events)))
    up.startService()  # no servers: up at once
    assert up._key.value == auth.key_from_secret("s") and up.discovery.key == up._key.value
    up.stopService()
