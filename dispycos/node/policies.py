# -*- test-case-name: tests.test_node_cli,tests.unit.test_service_window -*-
"""
What C{dispycosnode}'s command line adds to a node (L{NodePolicies}, a part of L{dispycos.node.service.NodeService}).
"""

from twisted.application import service
from twisted.internet import defer

from dispycos.errors import DispycosError
from dispycos.node.console import ConsoleService
from dispycos.node.pidfile import PidFileService
from dispycos.node.service_window import ENDED, IN_SERVICE
from dispycos.protocol import commands


class NodePolicies:
    """
    The node's command-line policies: C{--serve} (quit after so many
    computations), service windows, the zombie period of an idle computation,
    the pid file and the console's quit. The pid file, the service window
    and the console are named children of the node (L{_add_policy_services}).
    """

    def _start_extras(self):
        """
        Arm the service window (if any): the node's phase now, and a timer to
        the next change (started by the node's child "service_window"; the
        pid file and the console are children of their own).
        """
        if self.service_window is not None:
            self.service_phase = self.service_window.phase(self._local_now())
            self.log.info("service window ({w}): node is {p}", w=self.service_window, p=self.service_phase)
            self._arm_window()

    def _stop_extras(self):
        """Cancel the policies' timers (the zombie period's, the service window's): the node stops."""
        for timer in (self._zombie_timer, self._window_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._zombie_timer = self._window_timer = None

    def _stop_window(self):
        """Cancel the service window's timer."""
        if self._window_timer is not None and self._window_timer.active():
            self._window_timer.cancel()
        self._window_timer = None

    def _local_now(self):
        from datetime import datetime

        return datetime.fromtimestamp(self.reactor.seconds())

    def _check_accepting(self):
        """Raise L{DispycosError} when the node takes no new computation now."""
        if self.quitting or self.exiting or (self.serve >= 0 and self.served >= self.serve):
            raise DispycosError("node %s is quitting: it takes no more computations" % self.name)
        if self.service_window is not None and not self.service_window.in_service(self._local_now()):
            raise DispycosError("node %s is outside its service window (%s)" % (self.name, self.service_window))

    def _released(self, active):
        """After C{release}: count the computation, quit after the C{serve}th."""
        if self.active is None and self._zombie_timer is not None:
            if self._zombie_timer.active():
                self._zombie_timer.cancel()
            self._zombie_timer = None
        self._last_activity = self.reactor.seconds()
        if active.served:
            self.served += 1
        if self.quitting:
            self.request_exit("quit")
        elif self.serve >= 0 and self.served >= self.serve:
            self.request_exit("served %d computation(s) (--serve %d)" % (self.served, self.serve))

    def request_exit(self, why=""):
        """Stop the node (the reactor, unless an C{on_exit} hook was given), once."""
        if self.exiting or self.stopping:
            return
        self.exiting = True
        self.log.info("node {n} quits: {why}", n=self.name, why=why)
        self.reactor.callLater(0, self._exit_now)

    def _exit_now(self):
        if self._on_exit is not None:
            self._on_exit()
            return
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def close_computation(self, terminate=False, why=None):
        """
        Release the active computation on the node's own initiative (console,
        zombie period, service end), then tell its scheduler its servers are
        gone. A Deferred firing when done.
        """
        active = self.active
        if active is None:
            return defer.succeed(None)
        self.log.info("closing computation {c}{why}", c=active.computation, why=(": " + why) if why else "")
        slots = sorted(active.slots.items())

        def tell(result):
            # Every server is reported closed, then the node itself: the
            # scheduler then books the node free (one-way events: nothing
            # to wait for).
            proto = active.proto
            if proto.connected:
                for index, location in slots:
                    proto.callRemote(commands.ServerEvent, computation=active.computation, index=index,
                                     event="closed", location=location)
                proto.callRemote(commands.ServerEvent, computation=active.computation, index=0,
                                 event="node_closed", location="")
            return result

        return self.release(active.computation, terminate).addBoth(tell)

    def quit(self, terminate=False):
        """Close the active computation (if any), then exit (console C{quit}/C{terminate})."""
        self.quitting = True
        if self.active is None:
            self.request_exit("quit")
            return defer.succeed(None)
        return self.close_computation(terminate, "node quits").addBoth(lambda r: self.request_exit("quit"))

    def note_activity(self):
        """The active computation did something: restart its zombie timer."""
        self._last_activity = self.reactor.seconds()
        if self.zombie_period > 0 and self.active is not None and self._zombie_timer is None and not self.stopping:
            self._zombie_timer = self.reactor.callLater(self.zombie_period, self._zombie_check)

    def _zombie_check(self):
        self._zombie_timer = None
        active = self.active
        if active is None or self.stopping or self.zombie_period <= 0:
            return
        idle = self.reactor.seconds() - (self._last_activity or 0)
        if idle >= self.zombie_period:
            self.log.warn("computation {c} idle for {s:.1f}s (zombie period {z}s): releasing it",
                          c=active.computation, s=idle, z=self.zombie_period)
            self.close_computation(True, "zombie (idle for %.1fs)" % idle)
        else:
            self._zombie_timer = self.reactor.callLater(self.zombie_period - idle, self._zombie_check)

    def _arm_window(self):
        delay, _ = self.service_window.next_transition(self._local_now())
        self._window_timer = self.reactor.callLater(delay, self._window_tick)

    def _window_tick(self):
        self._window_timer = None
        if self.stopping:
            return
        phase = self.service_window.phase(self._local_now())
        if phase != self.service_phase:
            self.service_phase = phase
            if phase == IN_SERVICE:
                self.log.info("service window: node {n} is in service", n=self.name)
                self.announce()
            elif phase == ENDED:
                self.log.info("service window ended: node {n} terminates its computation", n=self.name)
                if self.active is not None:
                    self.close_computation(True, "the service window ended")
            else:
                self.log.info("service window stopped: node {n} takes no new computation", n=self.name)
        self._arm_window()

    def server_started(self, slot):
        """C{slot}'s process has its pid (a forked server's comes after C{spawn()} returned): record it."""
        if self.running and not self.stopping:
            self._write_pid_file()

    def _write_pid_file(self):
        """Rewrite the pid file (the child "pidfile", while it runs: see L{PidFileService})."""
        pidfile = self.namedServices.get("pidfile")
        if pidfile is not None and pidfile.running:
            pidfile.write()

    def _remove_pid_file(self):
        """Remove the pid file (the stopping node's last step: see L{PidFileService})."""
        pidfile = self.namedServices.get("pidfile")
        if pidfile is not None:
            pidfile.remove()

    def _add_policy_services(self, config):
        """
        The policies' named children, after the node's others and in this
        order: the pid file, the service window, the console (each only when
        asked for). They start once the node listens, so stop before it lets
        its computation go, the console first.
        """
        if config.pid_file:
            PidFileService(self, config.pid_file).setServiceParent(self)
        if config.service_window is not None:
            _WindowService(self).setServiceParent(self)
        if config.stdin_commands:
            # "auto": only when stdin is a terminal we are in the foreground of
            # (checked when the console starts: twistd may have daemonized since makeService).
            ConsoleService(self, require_terminal=config.stdin_commands == "auto").setServiceParent(self)


class _WindowService(service.Service):
    """
    The service window's timer (L{NodePolicies._start_extras}), a named child
    ("service_window") of the node, between the pid file and the console as
    it was armed before they were children.
    """

    name = "service_window"

    def __init__(self, node):
        self.node = node

    def startService(self):
        super().startService()
        self.node._start_extras()

    def stopService(self):
        super().stopService()
        self.node._stop_window()
