# -*- test-case-name: tests.unit.test_node_links,tests.test_core -*-
"""
The scheduler's links to its nodes: a L{NodeLink} per node (its connection
kept by a Twisted L{ClientService}, with backoff, heartbeats, the node's
servers as L{ServerEntry}s) over a L{_NodeClient} connection.

A link's service connects through a L{_NodeEndpoint} (TLS, or plaintext on
loopback, as L{dispycos.protocol.tls.connect} does); its
C{prepareConnection} runs the handshake and asks the node for its
L{commands.NodeInfo}, so only an authenticated node becomes C{"connected"}.
How long the service waits before the next attempt depends on how the last
one ended (L{_RetryPolicy}): a node not reachable is tried again after 0.2 s,
growing by 1.5 up to 10 s; one that refused after at least 5 s; a lost
connection after 0.5 s; an abandoned node (missed pulses) after the pulse
interval. A link to a node that was only discovered (not listed) does not
retry: its service stops until the node is announced again.
"""

import socket

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from dispycos import config, metrics
from dispycos.errors import AuthenticationError
from dispycos.heartbeat import SilenceWatch
from dispycos.protocol import commands
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.tls import connect as tls_connect
from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo, Location

#: Seconds before connecting again: after a lost connection; at least, after a refusal.
LOST_RETRY = 0.5
REFUSED_RETRY = 5.0
#: Seconds to wait for the node to accept the TCP connection.
CONNECT_TIMEOUT = 5


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


class _NodeClientFactory(Factory):
    """The L{_NodeClient}s of one link (the last one built is its current attempt's)."""

    noisy = False

    def __init__(self, link):
        self.link = link
        self.last = None

    def buildProtocol(self, addr):
        self.last = _NodeClient(self.link)
        return self.last


class _Attempt(Protocol):
    """
    One connection attempt, between the transport and what the service's
    factory built (its proxy of a L{_NodeClient}, which tells the service of
    a lost connection). The service hears of the loss only once it took the
    connection (C{admitted}, after L{NodeLink._prepare}): before that, the
    failed preparation is how it learns (a loss it is not in a state to hear).

    @ivar info: the node's answer to L{commands.NodeInfo}.
    """

    def __init__(self, proxy, client):
        self.proxy = proxy
        self.client = client
        self.made = False
        self.admitted = False
        self.cancelled = False
        self.info = None

    def logPrefix(self):
        return self.client.logPrefix()

    def makeConnection(self, transport):
        self.transport = transport
        if self.cancelled:
            transport.abortConnection()
            return
        self.made = True
        self.proxy.makeConnection(transport)

    def dataReceived(self, data):
        self.client.dataReceived(data)

    def connectionLost(self, reason):
        if self.admitted:
            self.proxy.connectionLost(reason)  # the client's, then the service's: it retries
            self.client.link._await()
        elif self.made:
            self.client.connectionLost(reason)  # fails the handshake, and so the attempt

    def cancel(self, deferred=None):
        """Give the attempt up (the service stops): a connection made after all is aborted."""
        self.cancelled = True
        if self.made and self.client.connected:
            self.transport.abortConnection()


@implementer(IStreamClientEndpoint)
class _NodeEndpoint:
    """
    The endpoint of a link's service: a connection to the link's node as
    L{dispycos.protocol.tls.connect} makes it (verified TLS when the
    scheduler has TLS, else TLS off this host and plaintext on loopback),
    with a timeout of L{CONNECT_TIMEOUT} seconds. (Twisted's own endpoints
    would do, but this keeps the one place that decides about TLS.)
    """

    def __init__(self, link):
        self.link = link

    def connect(self, protocolFactory):
        """Deferred firing with C{protocolFactory}'s protocol once connected (cancellable)."""
        link = self.link
        proxy = protocolFactory.buildProtocol(None)
        attempt = link._attempt = _Attempt(proxy, link.factory.last)
        link.state = "connecting"
        done = defer.Deferred(attempt.cancel)
        connecting = defer.maybeDeferred(tls_connect, link.scheduler.reactor, link.location.addr,
                                         link.location.port, attempt, link.scheduler.tls, timeout=CONNECT_TIMEOUT)

        def connected(_):
            if not done.called:
                done.callback(proxy)

        def failed(f):
            if not done.called:
                done.errback(f)

        connecting.addCallbacks(connected, failed)
        done.addErrback(lambda f: link._attempt_failed(attempt, f))
        return done


class _RetryPolicy:
    """
    The C{retryPolicy} of a link's service: seconds before the next attempt,
    by how the last one ended (the link's C{failure}). A node not reachable
    is tried again after C{backoffPolicy(initialDelay=0.2, factor=1.5,
    maxDelay=10)} of the number of such failures since the last connection
    (the service's count of failures in a row also counts refusals, which do
    not grow the backoff); a refusal waits that long but at least
    L{REFUSED_RETRY}; a lost connection L{LOST_RETRY}; an abandoned node the
    pulse interval. For an unlisted link the service is stopped on the next
    turn instead (it does not retry).
    """

    def __init__(self, link):
        self.link = link
        self.backoff = backoffPolicy(initialDelay=0.2, maxDelay=10.0, factor=1.5, jitter=lambda: 0.0)
        #: Attempts that found no node since the last connection.
        self.unreachable = 0

    def reset(self):
        """The link connected: the backoff starts over."""
        self.unreachable = 0

    def __call__(self, attempt):
        link = self.link
        kind = link.failure
        if kind == "lost":
            delay = LOST_RETRY
        elif kind == "abandoned":
            delay = link.scheduler.pulse_interval()
        elif kind == "refused":
            delay = max(self.backoff(self.unreachable), REFUSED_RETRY)
        else:
            delay = self.backoff(self.unreachable)
            self.unreachable += 1
        if not link.listed:
            link.scheduler.reactor.callLater(0, link._give_up)
        return delay


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


class NodeLink(service.Service):
    """
    The scheduler's connection to one node, kept by a L{ClientService}
    (C{service}) with backoff (see the module's docstring). A child of its
    scheduler's service tree, named C{"node <host>:<port>"}: it connects
    when started, and stops for good when stopped.

    @ivar state: C{"new"}, C{"connecting"}, C{"connected"}, C{"refused"}
        (C{refusal} says why), C{"unreachable"} or C{"lost"}.
    @ivar failure: how the last attempt or connection ended (C{"unreachable"},
        C{"refused"}, C{"lost"}, C{"abandoned"}; None while connected), which
        the retry policy reads.
    """

    log = Logger()

    def __init__(self, scheduler, location, listed=True):
        self.scheduler = scheduler
        self.location = location
        self.listed = listed
        self.proto = None
        self.state = "new"
        self.refusal = None
        self.failure = None
        self.info = None
        self.servers = {}
        self.computation = None
        self._stopped = False
        self._attempt = None
        self._waiting = None  # the service's whenConnected() Deferred
        self.factory = _NodeClientFactory(self)
        self.retry_policy = _RetryPolicy(self)
        self.service = ClientService(_NodeEndpoint(self), self.factory, retryPolicy=self.retry_policy,
                                     clock=scheduler.reactor, prepareConnection=self._prepare)
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

    @property
    def retrying(self):
        """Whether the link's service runs: it connects again by itself when the connection fails or is lost."""
        return self.service.running

    def connect(self):
        """
        Start the link's service: it connects, and again whenever an attempt
        fails or the connection is lost (an unlisted link: until the first
        failure). Nothing once stopped, or while the service runs.
        """
        if self._stopped or self.service.running:
            return
        self.service.startService()
        self._await()

    def _await(self):
        """Have the service tell L{_connected} of its next connection (once per connection)."""
        if self._waiting is not None or not self.service.running:
            return
        d = self._waiting = self.service.whenConnected()
        d.addCallbacks(self._connected, self._not_connected)

    def _not_connected(self, f):
        self._waiting = None
        f.trap(defer.CancelledError)  # the service stopped

    def _prepare(self, proxy):
        """The service's C{prepareConnection}: the handshake, then the node's L{commands.NodeInfo}."""
        attempt = self._attempt
        client = attempt.client
        d = client.handshake(self.scheduler.stretched_key(), "scheduler")
        d.addCallback(lambda _: client.callRemote(commands.NodeInfo))

        def admitted(info):
            attempt.info = info
            attempt.admitted = True

        d.addCallbacks(admitted, lambda f: self._attempt_failed(attempt, f))
        return d

    def _connected(self, proto):
        # Called by the service as it takes the connection (in its state
        # machine's transition): the scheduler hears of it on the next turn,
        # out of the transition (what it does may stop this link).
        self._waiting = None
        info = self._attempt.info
        self.proto = proto
        self.state = "connected"
        self.refusal = None
        self.failure = None
        self.retry_policy.reset()
        avail = DispycosNodeAvailInfo(self.location, **info["avail"])
        self.info = DispycosNodeInfo(info["name"], self.location.addr, info["cpus"], info["platform"], avail)
        self.log.info("node {name} at {loc} connected: {cpus} servers", name=info["name"], loc=self.location, cpus=info["cpus"])
        self.abandoned = False
        self.watch.heard()
        self._start_pulses()
        self.scheduler.reactor.callLater(0, self._announce, proto)

    def _announce(self, proto):
        if proto is self.proto and not self._stopped:
            self.scheduler._node_connected(self)

    def _attempt_failed(self, attempt, f):
        """An attempt failed (its connection, the handshake or NodeInfo): why, for the retry policy."""
        client = attempt.client
        if client.transport is not None and client.connected:
            client.transport.abortConnection()
        if self._stopped or attempt.cancelled:
            return f
        refusal = None
        if f.check(AuthenticationError):
            refusal = f.getErrorMessage()
        elif client.ever_connected:
            # It accepted the connection, then dropped or failed the handshake:
            # TLS on one side only, a certificate it would not take, ...
            refusal = "closed the connection during the handshake (%s; TLS on one side only?)" % (
                f.getErrorMessage(),)
        if refusal is not None:
            self.state = self.failure = "refused"
            self.refusal = refusal
            self.log.warn("node at {loc} refused: {why}", loc=self.location, why=self.refusal)
            self.scheduler._node_refused(self)
        else:
            self.state = self.failure = "unreachable"
            self.refusal = None
            self.log.debug("node at {loc} not reachable: {why}", loc=self.location, why=f.getErrorMessage())
        return f

    def _give_up(self):
        """An unlisted link does not retry: its service stops (until L{connect}, when the node is announced again)."""
        if self.service.running and not self._stopped and self.state != "connected":
            self.service.stopService()

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
        self.state = "lost"
        self.failure = "abandoned"  # the service retries after the pulse interval once the connection is closed
        proto.transport.abortConnection()

    def _pulse_answer(self, answer):
        self.watch.heard()
        avail = DispycosNodeAvailInfo(self.location, **answer["avail"])
        if self.info is not None:
            self.info.avail_info = avail
        comp = self.computation
        if comp is not None and comp is self.scheduler.active:
            comp.status_message(avail)

    def connection_lost(self, proto):
        """The connection of C{proto} closed: when it was the link's, the scheduler loses the node (the service retries)."""
        if proto is not self.proto:
            return
        self._stop_pulses()
        self.proto = None
        self.state = "lost"
        self.failure = "lost"
        self.scheduler._node_lost(self)

    def call(self, command, **kw):
        """Call C{command} on the node: its Deferred (failing at once when not connected)."""
        if self.proto is None:
            return defer.fail(error.ConnectionDone("node %s is not connected" % (self.location,)))
        return self.proto.callRemote(command, **kw)

    def startService(self):
        super().startService()
        self.connect()

    def stopService(self):
        super().stopService()
        # Not waited for (as the scheduler never waited for its links): a
        # closing scheduler does not hang on a node that is slow to hang up.
        self.stop()

    def stop(self):
        """For good: no more pulses or attempts, the connection closed. Deferred firing once it is."""
        self._stopped = True
        self._stop_pulses()
        return self.service.stopService()


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
