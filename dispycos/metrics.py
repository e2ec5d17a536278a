# -*- test-case-name: tests.test_observe -*-
"""
Counts every dispycos process keeps, and C{/metrics} in Prometheus's text
format (C{--metrics_port}, C{Scheduler(metrics_port=...)}).

Counting is always on and costs integers: a L{Counts} per service whose
attributes are bumped on paths that run anyway (a connection's reads,
writes and boxes, a task's creation and end). Nothing is made per task.
Only serving C{/metrics} needs C{prometheus_client} (the optional extra
C{dispycos[metrics]}); it is imported then, never by a process that does not
serve metrics.

Where each number is known:

* a server process counts the tasks it runs and its connections (to
  clients and peers) and reports them to its node with
  L{commands.ServerCounts} once a second while they change, and once more
  as it closes; the node adds those of its servers to its own (its links
  to schedulers), keeping what servers that ended had reported;
* a private scheduler counts its computations' tasks at the client (what
  was created there and what came back), and its process's connections;
* a shared scheduler knows nodes, servers and computations (tasks go from
  clients to servers directly: it never sees them).

C{tasks_retried} counts attempts after the first (C{retries=}, C{retry_on=}),
C{tasks_timed_out} tasks that ended past their C{timeout=} (SPEC 6.2); both
are counted at the client that made the tasks.

C{/metrics} shows counts only (no task names, arguments or secrets), so it
needs no token; it listens on loopback unless told otherwise.
"""

from functools import partial

from twisted.application import service
from twisted.logger import Logger

from dispycos.peer.outcomes import ABANDONED, ERROR, TERMINATED, TIMEOUT

log = Logger()

#: What a L{Counts} holds (the order of L{commands.ServerCounts}'s list).
FIELDS = (
    "tasks_started", "tasks_ended", "tasks_failed", "tasks_terminated", "tasks_abandoned", "tasks_retried",
    "tasks_timed_out", "connections_opened", "connections_closed", "bytes_in", "bytes_out", "boxes_in",
    "boxes_out", "streams_in", "streams_out", "auth_failures",
)


class Counts:
    """
    Integers a process or service bumps as things happen. C{tasks_ended}
    counts every end; the others that end badly are counted apart as well
    (so a task that finished is C{tasks_ended} less those).
    """

    __slots__ = FIELDS

    def __init__(self, values=None):
        for name, value in zip(FIELDS, values or (0,) * len(FIELDS)):
            setattr(self, name, value)

    def ended_badly(self, kind):
        """A task ended with outcome C{kind} other than OK (already counted in C{tasks_ended})."""
        if kind == ERROR:
            self.tasks_failed += 1
        elif kind == TERMINATED:
            self.tasks_terminated += 1
        elif kind == ABANDONED:
            self.tasks_abandoned += 1
        elif kind == TIMEOUT:
            self.tasks_timed_out += 1

    def as_list(self):
        return [getattr(self, name) for name in FIELDS]

    def add(self, values):
        """Add C{values} (a L{Counts} or a list in L{FIELDS} order)."""
        if isinstance(values, Counts):
            values = values.as_list()
        for name, value in zip(FIELDS, values):
            setattr(self, name, getattr(self, name) + value)


def _count_writes(transport, counts):
    """Count the bytes written to C{transport} (its C{write}, the one AMP and streams use)."""
    write = transport.write

    def counted_write(data):
        counts.bytes_out += len(data)
        write(data)

    try:
        transport.write = counted_write
    except AttributeError:  # a transport that takes no attribute: its bytes out are not counted
        pass


class CountedConnection:
    """
    Mixed in before a L{dispycos.protocol.base.DispycosAMP} subclass: counts
    its connection into C{self.counts} (a L{Counts}, set by the subclass; None:
    nothing is counted): connections opened and closed, bytes read and
    written, AMP boxes (messages) in and out, streams opened each way, and,
    on a listening side, a peer that sent something but closed without
    authenticating (a wrong secret, a bad or late handshake).
    """

    counts = None
    _heard = False

    def connectionMade(self):
        super().connectionMade()
        counts = self.counts
        if counts is not None:
            counts.connections_opened += 1
            _count_writes(self.transport, counts)

    def dataReceived(self, data):
        counts = self.counts
        if counts is not None:
            counts.bytes_in += len(data)
            if not self.authenticated:
                self._heard = True
        super().dataReceived(data)

    def ampBoxReceived(self, box):
        counts = self.counts
        if counts is not None:
            counts.boxes_in += 1
            if box.get(b"_command") == b"StreamOpen":
                counts.streams_in += 1
        super().ampBoxReceived(box)

    def sendBox(self, box):
        counts = self.counts
        if counts is not None:
            counts.boxes_out += 1
            if box.get(b"_command") == b"StreamOpen":
                counts.streams_out += 1
        super().sendBox(box)

    def write_box(self, wire):
        counts = self.counts
        if counts is not None:
            counts.boxes_out += 1  # (a batch box: never a StreamOpen)
        super().write_box(wire)

    def connectionLost(self, reason):
        counts = self.counts
        if counts is not None:
            counts.connections_closed += 1
            if self._heard and not self.authenticated and self.keyring is not None:
                counts.auth_failures += 1
        super().connectionLost(reason)


# -- servers' counts at their node ------------------------------------------------------


def server_reported(slot, values):
    """Server C{slot} reported its counts (cumulative since it started)."""
    if len(values) == len(FIELDS):
        slot.counts = values


def server_ended(node, slot):
    """C{slot}'s process ended: keep what it reported (its connections are closed now)."""
    values = getattr(slot, "counts", None)
    if values:
        values = list(values)
        opened, closed = FIELDS.index("connections_opened"), FIELDS.index("connections_closed")
        values[closed] = values[opened]
        node.retired_counts.add(values)
    slot.counts = None


# -- what each service shows ----------------------------------------------------------------

#: Every metric: (kind, name, help). Counters get C{_total} in the exposition.
CATALOG = [
    ("counter", "dispycos_tasks_started", "Tasks started (a map's tasks one by one)."),
    ("counter", "dispycos_tasks_finished", "Tasks that ended with a result."),
    ("counter", "dispycos_tasks_failed", "Tasks that ended with an exception (creation failures included)."),
    ("counter", "dispycos_tasks_terminated", "Tasks terminated before they ended."),
    ("counter", "dispycos_tasks_abandoned", "Tasks whose server or node was lost (counted at the client)."),
    ("counter", "dispycos_tasks_retried", "Task attempts after the first (task retries)."),
    ("counter", "dispycos_tasks_timed_out", "Tasks terminated because they ran past their timeout."),
    ("gauge", "dispycos_tasks_running", "Tasks started and not ended yet."),
    ("gauge", "dispycos_servers", "Server processes (at a node: running and ready; at a scheduler: of the active "
                                  "computation)."),
    ("gauge", "dispycos_servers_busy", "Servers running at least one task."),
    ("gauge", "dispycos_nodes", "Nodes this scheduler is connected to."),
    ("gauge", "dispycos_computations_active", "Computations running now (0 or 1)."),
    ("gauge", "dispycos_computations_queued", "Computations waiting for the active one to close."),
    ("counter", "dispycos_computations", "Computations taken (submitted to a scheduler, set up on a node)."),
    ("counter", "dispycos_messages_received", "AMP messages (boxes) received on dispycos connections."),
    ("counter", "dispycos_messages_sent", "AMP messages (boxes) sent on dispycos connections."),
    ("counter", "dispycos_received_bytes", "Bytes received on dispycos connections."),
    ("counter", "dispycos_sent_bytes", "Bytes sent on dispycos connections."),
    ("counter", "dispycos_streams_received", "Streams (files and large payloads) asked to be received."),
    ("counter", "dispycos_streams_sent", "Streams (files and large payloads) sent."),
    ("counter", "dispycos_auth_failures", "Connections that sent something but closed without authenticating."),
    ("gauge", "dispycos_connections", "Dispycos connections open."),
    ("counter", "dispycos_connections_opened", "Dispycos connections made or accepted."),
]


def _task_values(c):
    ended = c.tasks_ended
    bad = c.tasks_failed + c.tasks_terminated + c.tasks_abandoned + c.tasks_timed_out
    return {
        "dispycos_tasks_started": c.tasks_started,
        "dispycos_tasks_finished": ended - bad,
        "dispycos_tasks_failed": c.tasks_failed,
        "dispycos_tasks_terminated": c.tasks_terminated,
        "dispycos_tasks_abandoned": c.tasks_abandoned,
        "dispycos_tasks_retried": c.tasks_retried,
        "dispycos_tasks_timed_out": c.tasks_timed_out,
        "dispycos_tasks_running": max(0, c.tasks_started - ended),
    }


def _connection_values(c):
    return {
        "dispycos_messages_received": c.boxes_in,
        "dispycos_messages_sent": c.boxes_out,
        "dispycos_received_bytes": c.bytes_in,
        "dispycos_sent_bytes": c.bytes_out,
        "dispycos_streams_received": c.streams_in,
        "dispycos_streams_sent": c.streams_out,
        "dispycos_auth_failures": c.auth_failures,
        "dispycos_connections": max(0, c.connections_opened - c.connections_closed),
        "dispycos_connections_opened": c.connections_opened,
    }


def node_values(node):
    """A node's numbers: its own links plus what its servers reported (and those that ended had)."""
    total = Counts()
    total.add(node.counts)
    total.add(node.retired_counts)
    for slot in node.slots:
        values = getattr(slot, "counts", None)
        if values:
            total.add(values)
    values = _task_values(total)
    values.update(_connection_values(total))
    values.update({
        "dispycos_servers": sum(1 for s in node.slots if s.running and s.is_ready),
        "dispycos_servers_busy": sum(1 for s in node.slots if s.running and s.tasks),
        "dispycos_computations_active": 1 if node.active is not None else 0,
        "dispycos_computations": node.computations_taken,
    })
    return values


def _scheduler_values(scheduler):
    return {
        "dispycos_nodes": sum(1 for link in scheduler.links.values() if link.state == "connected"),
        "dispycos_servers": len(scheduler.servers),
        "dispycos_servers_busy": sum(1 for entry in scheduler.servers if entry.tasks > 0),
        "dispycos_computations_active": 1 if scheduler.active is not None else 0,
        "dispycos_computations_queued": len(scheduler.queue),
        "dispycos_computations": scheduler.computations_taken,
    }


def private_scheduler_values(scheduler):
    """A private scheduler's numbers: its computations' tasks (counted at the client), its process's connections."""
    values = _task_values(scheduler.counts)
    values.update(_connection_values(scheduler.runtime.counts))
    values.update(_scheduler_values(scheduler))
    return values


def shared_scheduler_values(service):
    """The shared scheduler's numbers: nodes, servers, computations and its connections (it never sees tasks)."""
    scheduler = service.scheduler
    values = _connection_values(scheduler.runtime.counts)
    values.update(_scheduler_values(scheduler))
    return values


# -- /metrics --------------------------------------------------------------------------------


class MetricsUnavailable(Exception):
    """C{prometheus_client} is not installed."""


def check_available():
    """Raise L{MetricsUnavailable} (saying how to install it) when C{prometheus_client} is missing."""
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise MetricsUnavailable("metrics need prometheus_client: pip install 'dispycos[metrics]'")


class _Collector:
    """A prometheus_client collector of the numbers C{values()} gives (read when scraped)."""

    def __init__(self, values):
        self._values = values

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self._values()
        for kind, name, text in CATALOG:
            if name in values:
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(name, text, value=values[name])


class MetricsServer:
    """
    C{/metrics} of one service on C{host}:C{port} (0: any free port), with a
    registry of its own (several services in one process do not clash).
    The page is made on the reactor's thread when scraped, so the numbers
    of one scrape are of one moment.

    (Not C{prometheus_client.twisted.MetricsResource}: it binds the global
    reactor and renders in that reactor's thread pool, so it would read the
    service's lists and dicts off the reactor thread while the reactor
    changes them, and serve a C{Scheduler(reactor=...)} from the wrong
    reactor. The encoding is prometheus_client's all the same.)
    """

    def __init__(self, reactor, values, host="127.0.0.1", port=0):
        check_available()
        from prometheus_client import CollectorRegistry
        from twisted.web import resource, server

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(values))

        class Site(server.Site):
            noisy = False

            def log(self, request):
                pass  # a scrape every few seconds is not worth a log line

        root = resource.Resource()
        root.putChild(b"metrics", _MetricsPage(self.registry))
        self.host = host or "127.0.0.1"
        self.listening = reactor.listenTCP(port, Site(root), interface=self.host)
        self.port = self.listening.getHost().port

    @property
    def url(self):
        """The address of the page (C{http://host:port/metrics})."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d/metrics" % (host, self.port)

    def stop(self):
        """Stop listening (a Deferred)."""
        from twisted.internet import defer

        listening, self.listening = self.listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)


def _page_class():
    from twisted.web import resource

    class MetricsPage(resource.Resource):
        isLeaf = True

        def __init__(self, registry):
            super().__init__()
            self.registry = registry

        def render_GET(self, request):
            from prometheus_client import exposition

            accept = request.getHeader("accept")
            encoder, content_type = exposition.choose_encoder(accept)
            request.setHeader(b"Content-Type", content_type.encode())
            return encoder(self.registry)

    return MetricsPage


def _MetricsPage(registry):
    return _page_class()(registry)


def serve(reactor, values, host, port, what):
    """Serve C{values()} as C{/metrics}; logs where. The L{MetricsServer}."""
    metrics = MetricsServer(reactor, values, host or "127.0.0.1", port)
    log.info("{what} metrics at {url}", what=what, url=metrics.url)
    return metrics


def serve_node(node, host, port):
    """Serve a L{dispycos.node.service.NodeService}'s numbers (L{node_values})."""
    return serve(node.reactor, partial(node_values, node), host, port, "dispycosnode %s" % node.name)


def serve_private_scheduler(scheduler, host, port):
    """Serve a private L{dispycos.scheduler.core.Scheduler}'s numbers (L{private_scheduler_values})."""
    return serve(scheduler.reactor, partial(private_scheduler_values, scheduler), host, port,
                 "scheduler %s" % scheduler.name)


def serve_shared_scheduler(service, host, port):
    """Serve the shared scheduler's numbers (L{shared_scheduler_values})."""
    return serve(service.reactor, partial(shared_scheduler_values, service), host, port,
                 "dispycos scheduler %s" % service.scheduler_name)


class MetricsService(service.Service):
    """
    C{/metrics} of C{owner} (a node or a scheduler) while it runs, as its
    child named C{"metrics"}: C{serve(owner)} makes the L{MetricsServer},
    kept in C{owner.metrics} (stopped, it still says where it was served).
    """

    name = "metrics"

    def __init__(self, owner, serve):
        self.owner = owner
        self.serve = serve

    def startService(self):
        super().startService()
        self.owner.metrics = self.serve(self.owner)

    def stopService(self):
        super().stopService()
        server = self.owner.metrics
        return server.stop() if server is not None else None
