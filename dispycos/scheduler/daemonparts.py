# -*- test-case-name: tests.unit.test_scheduler_tree,tests.test_shared -*-
"""
The parts of the shared scheduler's service tree
(L{dispycos.scheduler.shared.SchedulerService}), each a named child that
starts with it, in this order, and stops, last first, before its scheduler
closes: C{"listener"} (its ports for clients), C{"metrics"} (a
L{dispycos.metrics.MetricsService}), C{"monitor"} (the browser monitor) and
C{"console"} (stdin commands). Each
reads what it needs from its parent when it starts.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dispycos import config, paths
from dispycos.protocol.tls import listen as tls_listen


class Listener(service.Service):
    """Listens for clients on the parent's hosts (its first port for all), then sets up where their files go."""

    name = "listener"
    log = Logger()

    def __init__(self, protocol):
        #: C{protocol(owner)}: the protocol of a client's connection.
        self.protocol = protocol
        self.ports = []

    def startService(self):
        super().startService()
        owner = self.parent
        factory = Factory.forProtocol(lambda: self.protocol(owner))
        port = owner.tcp_port
        for host in owner.hosts:
            p = tls_listen(owner.reactor, port, factory, host, owner.scheduler.tls)
            self.ports.append(p)
            port = p.getHost().port
        owner.port = port
        # Everything the scheduler writes (clients' component files) goes under --dest_path.
        # (Under a directory of this user's alone: see dispycos.paths.)
        parent = paths.private_dir(owner._dest_path or config.default_dest_path())
        owner.dest_path = paths.fresh_dir(parent, "scheduler-%d" % port)
        owner.scheduler.advertise = (owner.ext_hosts[0] if owner.ext_hosts else owner.hosts[0], port)
        self.log.info("dispycos scheduler {name} listening at {h}:{p}", name=owner.scheduler_name,
                      h=owner.hosts[0] or "0.0.0.0", p=port)

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


class NoComputation:
    """What the scheduler's monitor shows before the first computation."""

    status_task = None


class Monitor(service.Service):
    """The browser monitor of the shared scheduler (on its first host, loopback for all)."""

    name = "monitor"

    def startService(self):
        super().startService()
        from dispycos.httpd import HTTPServer  # lazily: twisted.web only with a monitor

        owner = self.parent
        host = owner.hosts[0] if owner.hosts[0] not in ("", "0.0.0.0") else "127.0.0.1"
        tls = owner.scheduler.tls
        options = owner.scheduler_options
        owner.monitor = HTTPServer(NoComputation(), host=host, port=owner.http_port, reactor=owner.reactor,
                                   name=owner.scheduler_name,
                                   certfile=options.get("certfile") if tls.cert else None,
                                   keyfile=options.get("keyfile") if tls.cert else None)

    def stopService(self):
        super().stopService()
        monitor = self.parent.monitor
        return monitor.shutdown(wait=False) if monitor is not None else None


class Console(service.Service):
    """Commands on stdin (C{status}, C{quit}, ...; with C{"auto"}: only at a terminal)."""

    name = "console"

    def startService(self):
        super().startService()
        from dispycos.node.console import SchedulerConsole, start_console  # lazily: only with a console

        owner = self.parent
        owner.console = start_console(owner, require_terminal=owner.stdin_commands == "auto",
                                      console=SchedulerConsole)

    def stopService(self):
        super().stopService()
        console = self.parent.console
        if console is not None:
            console.stop()
