# -*- test-case-name: tests.test_core -*-
"""
The scheduler: finds nodes, runs computations one at a time in submission
order, places tasks on servers and keeps the books of nodes, servers and tasks.

L{Scheduler} runs privately in the client's process (as here); the shared
scheduler program wraps the same logic for remote clients.
"""

import os
import uuid
import weakref
from collections import deque

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from dispycos import config, metrics
from dispycos.errors import ComputationClosed, NoServerError, ScheduleError
from dispycos.interfaces import IScheduler
from dispycos.paths import read_secret_file, resolve_secret
from dispycos.peer.registry import runtime_for, set_runtime
from dispycos.peer.runtime import Runtime
from dispycos.protocol import auth, commands
from dispycos.protocol.discovery import Discovery
from dispycos.protocol.tls import TLS
from dispycos.scheduler.control import Controlling
from dispycos.scheduler.enlist import Enlisting
from dispycos.scheduler.links import NodeLink, _local_address_for
from dispycos.scheduler.placement import Placing
from dispycos.status import Location, Status


#: The private scheduler of each reactor (what Computation.schedule() uses by default).
_private = weakref.WeakKeyDictionary()


def private_scheduler(reactor):
    """The private L{Scheduler} running on C{reactor}, or None."""
    return _private.get(reactor)


@implementer(IScheduler)
class Scheduler(Placing, Controlling, Enlisting, service.MultiService):
    """
    A private scheduler in this process, on the running reactor. It takes
    the options of the C{dispycos} program under their long names.

    It is a L{service.MultiService}, started once made and stopped by
    L{close}, whose named children are, in the order they start:
    C{"metrics"} (with C{metrics_port}), C{"discovery"} (when it discovers
    nodes) and a L{NodeLink} per node, C{"node <host>:<port>"}, added as
    nodes are listed or found.

    @param nodes: nodes to connect to: C{"host[:port]"} strings (port 9706
        by default) or L{Location}s.
    @param secret: the secret the nodes were started with (or read from
        C{secret_file}; default: C{$DISPYCOS_SECRET}, else this user's own
        secret, the one nodes started without a secret use); nodes prove
        C{node_secret} (C{node_secret_file}) instead when they were given one.
    @param discover: also find nodes on the local network (default: only
        when no C{nodes} are listed).
    @param ip_addr: the address this process listens on for its servers
        and peers (default: loopback, or the address towards the first
        listed node that is not on loopback); C{tcp_port} its port (0: any).
    @param ext_ip_addr: the address announced to servers instead (NAT).
    @param udp_port: the discovery port; C{node_port} the nodes' default port.
    @param name: this scheduler's name in its log.
    @param dest_path: where computations put the files tasks send back,
        unless C{Computation(dest_path=...)} says otherwise.
    @param max_file_size: the largest file this process accepts (0: any).
    @param zombie_period: seconds of silence after which a node is
        abandoned (default: 5 pulse intervals; 0: never, only a lost
        connection counts).
    @param pulse_interval: the heartbeat interval while no computation runs.
    @param metrics_port: serve C{/metrics} (Prometheus; needs
        C{dispycos[metrics]}) on this port (0: any free one, see
        C{metrics_url}) of C{metrics_host} (default loopback); None: not served.
    """

    log = Logger()

    def __init__(self, nodes=(), secret="", ip_addr=None, reactor=None, private=True, udp_port=config.SchedulerPort,
                 node_port=config.NodePort, discover=None, certfile=None, keyfile=None, cafile=None, tcp_port=0,
                 ext_ip_addr=None, name=None, dest_path=None, max_file_size=0, secret_file=None, zombie_period=None,
                 pulse_interval=10, node_secret=None, node_secret_file=None, client_key=None, metrics_port=None,
                 metrics_host="127.0.0.1"):
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        secret = resolve_secret(secret, secret_file)
        if isinstance(ip_addr, (list, tuple)):
            ip_addr = ip_addr[0] if ip_addr else None
        if isinstance(ext_ip_addr, (list, tuple)):
            ext_ip_addr = ext_ip_addr[0] if ext_ip_addr else None
        if zombie_period is not None and zombie_period < 0:
            raise ValueError("zombie_period must not be negative")
        self.name = name or "dispycos-%d" % os.getpid()
        self.dest_path = dest_path
        self.zombie_period = zombie_period
        self.default_pulse_interval = pulse_interval
        if node_secret_file:
            node_secret = read_secret_file(node_secret_file)
        # The key nodes prove (their own secret, else the cluster's, kept apart from what
        # clients prove), stretched in the reactor's thread pool (auth.StretchedKey): the
        # links connect meanwhile, and their handshakes wait for it.
        self._node_key = auth.StretchedKey(reactor, node_secret or secret, auth.NODE)
        self._node_key.start()
        self.client_key = client_key
        self.tls = TLS(certfile, keyfile, cafile)
        if ip_addr is None:
            ip_addr = _local_address_for(nodes)
        runtime = runtime_for(reactor)
        if runtime is None:
            runtime = Runtime(reactor, host=ip_addr if private else "127.0.0.1", port=tcp_port if private else 0,
                              announce=ext_ip_addr if private else None)
            if private and self.tls.cert is not None:
                runtime.tls = self.tls
            runtime.listen()
            set_runtime(runtime)
        elif private and (ip_addr not in (runtime.host, "") or (self.tls.cert is not None and runtime.tls is None)
                          or (tcp_port and tcp_port != runtime.location.port)
                          or (ext_ip_addr and ext_ip_addr != runtime.announce)) and not runtime.links:
            if self.tls.cert is not None:
                runtime.tls = self.tls
            if ext_ip_addr:
                runtime.announce = ext_ip_addr
            runtime.rebind(ip_addr if ip_addr else runtime.host, tcp_port)
        if private and max_file_size:
            runtime.max_file_size = max_file_size
        self.runtime = runtime
        #: True when this scheduler runs in its client's process, on the runtime that carries the tasks.
        self.private = private
        #: Tasks of this scheduler's computations, counted at the client (L{dispycos.metrics}).
        self.counts = metrics.Counts()
        self.computations_taken = 0
        self.metrics = None
        if metrics_port is not None:
            metrics.MetricsService(self, lambda s: metrics.serve_private_scheduler(s, metrics_host, metrics_port)
                                   ).setServiceParent(self)
        self.links = {}
        self.queue = deque()
        self.active = None
        self.servers = []
        self.waiting = deque()  # placements at a node/server, and async ones
        self.waiting_cpu = deque()  # CPU tasks for any server: first come, first served
        self.closed = False
        self.node_port = node_port
        self.advertise = None  # (host, port) a shared scheduler tells clients looking for one
        self.discovery = None
        if discover is None:
            discover = not nodes  # listed nodes only, unless asked to discover as well
        if discover:
            # Its key is set once stretched (it sends nothing before, and reads what came meanwhile then).
            self.discovery = Discovery(reactor, [ip_addr if ip_addr is not None else "127.0.0.1"], udp_port, None,
                                       self._discovered, client_key=client_key)
            self.discovery.setName("discovery")
            self.discovery.setServiceParent(self)
        self.startService()
        for entry in nodes:
            self.add_node(entry)
        self._node_key.wait().addCallback(self._key_stretched)
        if private:
            # Only a private scheduler's runtime carries its computations' tasks: a
            # shared one's never connects to their servers (its clients do).
            runtime.lost_hooks.append(self.server_unreachable)
            _private[reactor] = self

    @property
    def key(self):
        """The key nodes prove (stretched now if it is not yet)."""
        return self._node_key.now()

    def stretched_key(self):
        """A Deferred firing with L{key} once it is stretched (at once when it is)."""
        return self._node_key.wait()

    def _key_stretched(self, key):
        if self.discovery is not None:
            self.discovery.key = key
        if not self.closed:
            self.probe()
        return key

    def pulse_interval(self):
        """The heartbeat interval: the active computation's, else the default."""
        comp = self.active
        if comp is not None:
            return comp.pulse_interval
        return self.default_pulse_interval

    def silence_limit(self, interval):
        """Seconds of silence after which a node is abandoned (None: never)."""
        if self.zombie_period is None:
            return config.MissedPulses * interval
        return self.zombie_period or None

    # -- nodes --------------------------------------------------------------------

    def add_node(self, entry, listed=True):
        """Connect to a node (C{"host[:port]"} or L{Location})."""
        loc = Location.parse(entry, config.NodePort)
        link = self.links.get(loc)
        if link is None:
            link = self.links[loc] = NodeLink(self, loc, listed)
            link.setName("node %s:%d" % (loc.addr, loc.port))
            link.setServiceParent(self)  # it connects, the scheduler running
        elif link.state in ("lost", "unreachable", "refused") and not link.retrying:
            link.connect()

    # -- discovery ------------------------------------------------------------------

    def probe(self):
        """Ask nodes on the local network to announce themselves."""
        if self.discovery is not None and self.discovery.ports:
            msg = {"kind": "probe", "role": "scheduler", "reply_port": self.discovery.reply_port}
            self.discovery.broadcast(msg, self.node_port)

    def _discovered(self, msg, addr):
        kind, role = msg.get("kind"), msg.get("role")
        if msg.get("client"):  # signed with the clients' key: a client looking for this scheduler, nothing else
            kind = kind if kind == "find" else None
        if kind == "announce" and role == "node" and not self.closed:
            port = msg.get("port")
            if isinstance(port, int) and 0 < port < 65536:
                host = msg.get("host") or addr[0]
                self.add_node(Location(host, port), listed=False)
        elif kind == "find" and role == "client" and self.advertise is not None:
            reply_port = msg.get("reply_port")
            if isinstance(reply_port, int) and 0 < reply_port < 65536:
                host, port = self.advertise
                self.discovery.send({"kind": "scheduler", "role": "scheduler", "host": host, "port": port},
                                    (addr[0], reply_port), client=bool(msg.get("client")))

    def _node_connected(self, link):
        comp = self.active
        if comp is not None:
            self._reserve(link, comp)

    def _node_refused(self, link):
        comp = self.active
        if comp is not None:
            self._check_refusals(comp)

    def _check_refusals(self, comp):
        """
        Fail C{comp}'s C{schedule()} at once when no server can become ready:
        every known node refused this scheduler (secret, version, TLS) or
        cannot serve this computation (setup failed, a file over its limit),
        or was left out by the allocations (a node not listening yet is still
        tried, and so is one that only declined for now).
        """
        if not comp.scheduling() or any(e.ready for e in self.servers):
            return
        links = list(self.links.values())

        def failed(l):
            return l.state == "refused" or (l.failed is not None and l.failed[0] is comp)

        if links and all(failed(l) or l.ignored_by is comp for l in links) and any(map(failed, links)):
            why = "; ".join("%s: %s" % (l.location, self._why(l, comp)) for l in links)
            head = "every node refused" if all(l.state == "refused" for l in links) else "no server can become ready"
            comp.schedule_failed(ScheduleError("%s: %s" % (head, why)))

    @staticmethod
    def _why(link, comp):
        """What C{link}'s node answered, for error messages about C{comp}."""
        if link.state == "refused":
            return link.refusal
        if link.failed is not None and link.failed[0] is comp:
            return link.failed[1]
        if link.ignored_by is comp:
            return "not used (allocation)"
        if link.declined and not link.servers:
            return "declined: %s" % link.declined
        return link.state

    def _node_failed(self, link, comp, exc):
        """C{link}'s node cannot serve C{comp} (setup failed, a file over its limit)."""
        if link.computation is comp:
            link.computation = None
        link.ignored_by = comp
        link.failed = (comp, str(exc))
        self.log.warn("node {loc}: {e}", loc=link.location, e=exc)
        self._fail_if_no_servers()
        self._check_refusals(comp)

    def _node_lost(self, link):
        self._drop_node(link, Status.ServerDisconnected, Status.NodeDisconnected, "node %s lost" % (link.location,))

    def _drop_node(self, link, server_status, node_status, why):
        # Statuses first, then the tasks' errbacks: code woken by an errback
        # already sees why.
        comp = self.active
        entries = list(link.servers.values())
        link.servers.clear()
        was_reserved = link.computation is not None
        link.computation = None
        for entry in entries:
            self._forget_server(entry, server_status)
        if comp is not None and was_reserved:
            comp.status(node_status, link.info)
        for entry in entries:
            self.runtime._abandon_at(entry.location, why)
            self.runtime.drop(entry.location)
        self._fail_if_no_servers()

    def _node_abandoned(self, link):
        """C{link}'s node missed too many pulses: abandon it, its servers and tasks."""
        self._drop_node(link, Status.ServerAbandoned, Status.NodeAbandoned,
                        "node %s abandoned (no pulse)" % (link.location,))

    def server_unreachable(self, location):
        """
        A client's connection to the server at C{location} broke or was
        refused: place nothing there until its node reports it (re)initialized.
        """
        entry = self.entry_at(location)
        if entry is not None:
            entry.ready = False

    def _fail_if_no_servers(self):
        if self.servers or any(l.state == "connected" for l in self.links.values()):
            return
        for p in self._take_waiting():
            p.deferred.errback(NoServerError("no servers left: every node is gone"))

    # -- computations -------------------------------------------------------------

    def servers_of(self, comp):
        """Deferred firing with the L{Location}s of C{comp}'s servers."""
        if comp is not self.active:
            return defer.succeed([])
        return defer.succeed([e.location for e in self.servers])

    def nodes_of(self, comp):
        """Deferred firing with the addresses of C{comp}'s nodes."""
        if comp is not self.active:
            return defer.succeed([])
        return defer.succeed(sorted({e.node_addr for e in self.servers}))

    def node_report(self):
        """What each known node answered, for error messages."""
        parts = ["%s: %s" % (l.location, self._why(l, self.active)) for l in self.links.values()]
        return (" (nodes: %s)" % ", ".join(parts)) if parts else " (no nodes known)"

    def entry_at(self, location):
        for entry in self.servers:
            if entry.location == location:
                return entry
        return None

    def submit(self, comp):
        """Queue C{comp}; it becomes active when the ones before it closed."""
        if self.closed:
            raise ScheduleError("the scheduler is closed")
        if comp.id is None:
            comp.id = uuid.uuid4().hex
        comp.key = os.urandom(32)
        self.queue.append(comp)
        self.computations_taken += 1
        # On the next turn: a remote client must have our answer (the
        # computation's id) before it hears anything else about it.
        self.reactor.callLater(0, self._next)

    def withdraw(self, comp):
        if comp in self.queue:
            self.queue.remove(comp)

    def _next(self):
        if self.active is not None or not self.queue:
            return
        comp = self.active = self.queue.popleft()
        self.runtime.keys[comp.id] = comp.key
        comp.activated()
        self.probe()
        for link in self.links.values():
            if link.state == "connected":
                self._reserve(link, comp)
        self._check_refusals(comp)

    @defer.inlineCallbacks
    def release(self, comp, terminate=False):
        """Release every node of C{comp}, then start the next computation."""
        if comp is not self.active:
            self.withdraw(comp)
            return
        for p in self._take_waiting():
            p.deferred.errback(ComputationClosed("computation closed"))
        calls = []
        for link in self.links.values():
            if link.computation is comp:
                calls.append(link.call(commands.Release, computation=comp.id, terminate=terminate))
        yield defer.DeferredList(calls, consumeErrors=True)
        for link in self.links.values():
            if link.computation is comp:
                for entry in list(link.servers.values()):
                    self._remove_server(entry, Status.ServerClosed, "computation closed")
                link.servers.clear()
                link.computation = None
                comp.status(Status.NodeClosed, link.info)
        self.servers = []
        self.runtime.keys.pop(comp.id, None)
        self.active = None
        self._next()

    # -- control ------------------------------------------------------------------


    # -- placement ----------------------------------------------------------------


    # -- shutting down -----------------------------------------------------------

    @defer.inlineCallbacks
    def close(self):
        """Close every computation and disconnect from the nodes."""
        self.closed = True
        while self.queue:
            self.queue.popleft().schedule_failed(ScheduleError("scheduler closed"))
        if self.active is not None:
            yield self.active.close(terminate=True)
        if self.server_unreachable in self.runtime.lost_hooks:
            self.runtime.lost_hooks.remove(self.server_unreachable)
        if _private.get(self.reactor) is self:
            del _private[self.reactor]
        if self.running:
            yield self.stopService()  # the links, last first, then discovery and /metrics

    @property
    def metrics_url(self):
        """Where this scheduler serves C{/metrics} (None without C{metrics_port})."""
        return self.metrics.url if self.metrics is not None else None


# Status codes as class attributes, as in pycos programs (msg.status == Scheduler.ComputationClosed).
for _name, _member in Status.__members__.items():
    setattr(Scheduler, _name, _member)
del _name, _member
