# -*- test-case-name: tests.test_node_cli -*-
"""
The node's stdin console (without C{--daemon} and with a terminal on stdin,
or with C{--stdin_commands}): one command a line.

  - C{status} (or an empty line): the node's name and address, the
    computations served so far, the service window, and each server's state
    (pid, location, computation it runs for);
  - C{close}: close the current computation (its servers are closed and
    replaced); the node keeps serving;
  - C{quit} or C{exit}: take no new computation, close the current one (if
    any), then exit;
  - C{terminate}: like C{quit}, but the computation's tasks are terminated;
  - end of input: as C{quit}.

Task counts come from the servers' once-a-second reports.
"""

import os
import sys

from twisted.application import service
from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.protocols import basic
from zope.interface import implementer

PROMPT_HELP = 'dispycosnode commands: "status", "close", "quit" (or "exit"), "terminate"'


def status_lines(node):
    """The lines the C{status} command prints about C{node}."""
    lines = []
    addr = node.ext_hosts[0] if node.ext_hosts else (node.hosts[0] if node.hosts and node.hosts[0] else "0.0.0.0")
    limit = "" if node.serve < 0 else " of %d" % node.serve
    lines.append('dispycosnode "%s" at %s:%s: %d computation(s) served so far%s'
                 % (node.name, addr, node.port, node.served, limit))
    if node.service_window is not None:
        lines.append("  service window %s: %s" % (node.service_window, node.service_window.phase(node._local_now())))
    if node.quitting or node.exiting:
        lines.append("  quitting: no new computations")
    active = node.active
    if active is None:
        lines.append("  no computation")
    else:
        lines.append("  computation %s of client %s" % (active.computation, active.client or "?"))
    for slot in node.slots:
        state = "running" if slot.running and slot.is_ready else ("starting" if slot.running else "not running")
        head = '  server %d "%s_server-%d" pid %s at %s:%s (%s)' % (
            slot.index, node.name, slot.index, slot.pid, slot.host or addr, slot.port, state)
        if active is not None and slot.index in active.slots:
            lines.append("%s: running %d task(s) for computation %s" % (head, slot.tasks, active.computation))
        else:
            lines.append("%s: is not currently used" % head)
    return lines


@implementer(interfaces.IHalfCloseableProtocol)
class NodeConsole(basic.LineReceiver):
    """Reads commands for C{node} a line at a time (the transport: stdio)."""

    delimiter = b"\n"
    log = Logger()

    def __init__(self, node):
        self.node = node
        self.done = False

    def connectionMade(self):
        self.say(PROMPT_HELP)

    def say(self, text):
        if self.transport is not None:
            self.transport.write(text.encode("utf-8", "replace") + b"\n")

    def lineReceived(self, line):
        command = line.decode("utf-8", "replace").strip().lower()
        if self.done:
            return
        if command in ("", "status"):
            for text in status_lines(self.node):
                self.say(text)
        elif command == "close":
            if self.node.active is None:
                self.say("no computation to close")
            else:
                self.say("closing computation %s" % self.node.active.computation)
                self.node.close_computation(False, "closed from the console").addBoth(
                    lambda _: self.say("computation closed"))
        elif command in ("quit", "exit"):
            self.quit(False)
        elif command == "terminate":
            self.quit(True)
        else:
            self.say("unknown command %r; %s" % (command, PROMPT_HELP))

    def quit(self, terminate):
        self.done = True
        if self.node.active is not None:
            self.say("%s computation %s, then quitting"
                     % ("terminating" if terminate else "closing", self.node.active.computation))
        else:
            self.say("quitting")
        self.node.quit(terminate)

    # IHalfCloseableProtocol: end of input is "quit"; stdout stays open.
    def readConnectionLost(self):
        if not self.done and not self.node.stopping:
            self.quit(False)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        pass


class _Console:
    """The running console: its protocol and stdio transport."""

    def __init__(self, protocol, transport):
        self.protocol = protocol
        self.transport = transport

    def stop(self):
        """Stop reading stdin (the node is stopping)."""
        self.protocol.done = True
        try:
            self.transport.stopReading()
        except Exception:
            pass


def stdin_is_foreground_terminal():
    """Whether stdin is a terminal of which this process is in the foreground."""
    try:
        fd = sys.stdin.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (AttributeError, OSError, ValueError):
        return False


class SchedulerConsole(NodeConsole):
    """The shared scheduler's console: C{status}, C{quit}/C{exit}."""

    help = 'dispycos scheduler commands: "status", "quit" (or "exit")'

    def connectionMade(self):
        self.say(self.help)

    def lineReceived(self, line):
        command = line.decode("utf-8", "replace").strip().lower()
        if self.done:
            return
        if command in ("", "status"):
            self.say(self.node.status())
        elif command in ("quit", "exit"):
            self.done = True
            self.say("closing the active computation, then quitting")
            self.node.quit()
        else:
            self.say("unknown command %r; %s" % (command, self.help))

    def readConnectionLost(self):
        # As the original: end of input does not stop a scheduler.
        self.log.warn("stdin closed: the scheduler keeps running (stop it with a signal)")


def start_console(node, require_terminal=False, console=NodeConsole):
    """
    Read commands for C{node} (a node or scheduler service) from stdin and
    answer on stdout. With C{require_terminal}, only if stdin is a terminal
    of which this process is in the foreground (else None: as with C{--daemon}).
    """
    from twisted.internet import stdio

    if require_terminal and not stdin_is_foreground_terminal():
        return None
    protocol = console(node)
    transport = stdio.StandardIO(protocol, reactor=node.reactor)
    return _Console(protocol, transport)


class ConsoleService(service.Service):
    """
    The node's stdin console (L{start_console}) as a named child ("console")
    of the node, the last: it starts once everything else has, and stops
    first, so no command comes in while the node stops. With
    C{require_terminal} ("auto" in C{--stdin_commands}), stdin is looked at
    when the service starts (twistd may have daemonized since the node was
    made): no terminal, no console. The running console is C{node.console}
    (None without one).
    """

    name = "console"

    def __init__(self, node, require_terminal=False):
        self.node = node
        self.require_terminal = require_terminal

    def startService(self):
        super().startService()
        self.node.console = start_console(self.node, require_terminal=self.require_terminal)

    def stopService(self):
        super().stopService()
        if self.node.console is not None:
            self.node.console.stop()
