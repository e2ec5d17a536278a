# -*- test-case-name: tests.test_core -*-
"""
The scheduler's links to its nodes: a L{NodeLink} per node (connecting with
backoff, heartbeats, the node's servers as L{ServerEntry}s) over a
L{_NodeClient} connection.
"""

import socket

from twisted.internet import defer, error
from twisted.logger import Logger

from dispycos import config, metrics
from dispycos.errors import AuthenticationError
from dispycos.heartbeat import SilenceWatch
from dispycos.protocol import commands
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.tls import connect as tls_connect
from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo, Location


class _NodeClient(metrics.CountedConnection, DispycosAMP):
    """The scheduler's connection to one node."""

    def __init__(self, link):
        super().__init__(link.scheduler.reactor)
        self.link = link
        self.counts = link.scheduler.runtime.counts

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.link.connection_lost(self)

    @commands.ServerEvent.responder
    def _server_event(self, computation, index, event, location):
        self.link.scheduler._server_event(self.link, computation, index, event, location)
        return {}


class ServerEntry:
    """The scheduler's record of one server of the active computation."""

    def __init__(self, node, index, location):
        self.node = node
        self.index = index
        self.location = location
        self.cpu_busy = False
        self.tasks = 0
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.ready = True
        self.suspended = False

    @property
    def node_addr(self):
        return self.node.addr

    @property
    def node_name(self):
        return self.node.info.name if self.node.info else None

    def __repr__(self):
        return "<server %s>" % (self.location,)


class NodeLink:
    """The scheduler's connection to one node, with reconnection and backoff."""

    log = Logger()

    def __init__(self, scheduler, location, listed=True):
        self.scheduler = scheduler
        self.location = location
        self.listed = listed
        self.proto = None
        self.state = "new"
        self.refusal = None
        self.info = None
        self.servers = {}
        self.computation = None
        self._delay = 0.2
        self._retry = None
        self._stopped = False
        #: The node's heartbeat: pulses at the scheduler's interval, abandoned after its silence limit.
        self.watch = SilenceWatch(scheduler.reactor, scheduler.pulse_interval,
                                  lambda: scheduler.silence_limit(scheduler.pulse_interval()), self._silent, self._pulse)
        self.abandoned = False
        self.held = None
        self.ignored_by = None
        #: (computation, why) when this node cannot serve that computation
        #: (a setup failure, a file over its limit); why it declined to be
        #: held for the active one (busy, outside its service window).
        self.failed = None
        self.declined = None
        self.suspended = False

    @property
    def addr(self):
        return self.info.addr if self.info else self.location.addr

    def connect(self):
        if self._stopped:
            return
        self._retry = None
        self.state = "connecting"
        reactor = self.scheduler.reactor
        proto = _NodeClient(self)
        d = tls_connect(reactor, self.location.addr, self.location.port, proto, self.scheduler.tls, timeout=5)
        d.addCallback(lambda p: p.handshake(self.scheduler.key, "scheduler"))
        d.addCallback(lambda _: proto.callRemote(commands.NodeInfo))
        d.addCallbacks(lambda info: self._connected(proto, info), lambda f: self._failed(proto, f))

    def _connected(self, proto, info):
        if self._stopped:
            proto.transport.loseConnection()
            return
        self.proto = proto
        self.state = "connected"
        self.refusal = None
        self._delay = 0.2
        avail = DispycosNodeAvailInfo(self.location, **info["avail"])
        self.info = DispycosNodeInfo(info["name"], self.location.addr, info["cpus"], info["platform"], avail)
        self.log.info("node {name} at {loc} connected: {cpus} servers", name=info["name"], loc=self.location, cpus=info["cpus"])
        self.abandoned = False
        self.watch.heard()
        self._start_pulses()
        self.scheduler._node_connected(self)

    # -- heartbeat -------------------------------------------------------------

    def _start_pulses(self, now=False):
        self.watch.start(now=now)

    def _stop_pulses(self):
        self.watch.stop()

    def _pulse(self):
        if self.proto is not None:
            d = self.proto.callRemote(commands.Pulse, interval=float(self.scheduler.pulse_interval()))
            d.addCallbacks(self._pulse_answer, lambda f: None)

    def _silent(self, seconds):
        if self.proto is None:
            return
        self.log.warn("node at {loc} silent for {s:.1f}s: abandoned", loc=self.location, s=seconds)
        self.abandoned = True
        self.scheduler._node_abandoned(self)
        proto, self.proto = self.proto, None
        proto.transport.abortConnection()
        self.state = "lost"
        self._schedule_retry(self.scheduler.pulse_interval())

    def _pulse_answer(self, answer):
        self.watch.heard()
        avail = DispycosNodeAvailInfo(self.location, **answer["avail"])
        if self.info is not None:
            self.info.avail_info = avail
        comp = self.computation
        if comp is not None and comp is self.scheduler.active:
            comp.status_message(avail)

    def _failed(self, proto, f):
        if proto.transport is not None and proto.connected:
            proto.transport.abortConnection()
        if self._stopped:
            return
        refusal = None
        if f.check(AuthenticationError):
            refusal = f.getErrorMessage()
        elif proto.ever_connected:
            # It accepted the connection, then dropped or failed the handshake:
            # TLS on one side only, a certificate it would not take, ...
            refusal = "closed the connection during the handshake (%s; TLS on one side only?)" % (
                f.getErrorMessage(),)
        if refusal is not None:
            self.state = "refused"
            self.refusal = refusal
            self.log.warn("node at {loc} refused: {why}", loc=self.location, why=self.refusal)
            self.scheduler._node_refused(self)
            self._schedule_retry(max(self._delay, 5.0))
        else:
            self.state = "unreachable"
            self.refusal = None
            self.log.debug("node at {loc} not reachable: {why}", loc=self.location, why=f.getErrorMessage())
            self._schedule_retry(self._delay)
            self._delay = min(self._delay * 1.5, 10.0)

    def _schedule_retry(self, delay):
        if self.listed and not self._stopped:
            self._retry = self.scheduler.reactor.callLater(delay, self.connect)

    def connection_lost(self, proto):
        if proto is not self.proto:
            return
        self._stop_pulses()
        self.proto = None
        self.state = "lost"
        self.scheduler._node_lost(self)
        self._schedule_retry(0.5)

    def call(self, command, **kw):
        if self.proto is None:
            return defer.fail(error.ConnectionDone("node %s is not connected" % (self.location,)))
        return self.proto.callRemote(command, **kw)

    def stop(self):
        self._stopped = True
        self._stop_pulses()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.proto is not None and self.proto.connected:
            self.proto.transport.loseConnection()


def _local_address_for(nodes):
    """
    The address of this host on the way to the first non-loopback node in
    C{nodes} (no packet is sent), or loopback.
    """
    for entry in nodes:
        try:
            loc = Location.parse(entry, config.NodePort)
            addr = socket.gethostbyname(loc.addr)
        except (OSError, ValueError):
            continue
        if addr.startswith("127."):
            continue
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.connect((addr, loc.port))
                return s.getsockname()[0]
            finally:
                s.close()
        except OSError:
            continue
    return "127.0.0.1"
