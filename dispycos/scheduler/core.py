# -*- test-case-name: tests.test_core -*-
"""
The scheduler: finds nodes, runs computations one at a time in submission
order, places tasks on servers and keeps the books of nodes, servers and tasks.

L{Scheduler} runs privately in the client's process (as here); the shared
scheduler program wraps the same logic for remote clients.
"""

import copy
import os
import socket
import uuid
import weakref
from collections import deque

from twisted.internet import defer, error, task
from twisted.logger import Logger
from zope.interface import implementer

from dispycos import config, metrics
from dispycos.errors import (AuthenticationError, ComputationClosed, ConnectionLostError, DispycosError, FileTransferError,
                     NoServerError, ScheduleError, SetupError)
from dispycos.interfaces import IScheduler
from dispycos.paths import read_secret_file, resolve_secret
from dispycos.peer.runtime import Runtime, runtime_for, set_runtime
from dispycos.protocol import auth, commands
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.discovery import Discovery
from dispycos.protocol.streams import send_file
from dispycos.protocol.tls import TLS
from dispycos.protocol.tls import connect as tls_connect
from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo, DispycosStatus, Location, Status


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
        self._pulser = None
        self.last_pulse = None
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
        self.last_pulse = self.scheduler.reactor.seconds()
        self._start_pulses()
        self.scheduler._node_connected(self)

    # -- heartbeat -------------------------------------------------------------

    def _start_pulses(self, now=False):
        self._stop_pulses()
        self._pulser = task.LoopingCall(self._pulse)
        self._pulser.clock = self.scheduler.reactor
        self._pulser.start(self.scheduler.pulse_interval(), now=now)

    def _stop_pulses(self):
        if self._pulser is not None and self._pulser.running:
            self._pulser.stop()
        self._pulser = None

    def _pulse(self):
        scheduler = self.scheduler
        interval = scheduler.pulse_interval()
        if self._pulser is not None and self._pulser.interval != interval:
            self._pulser.interval = interval
        now = scheduler.reactor.seconds()
        if self.proto is None:
            return
        limit = scheduler.silence_limit(interval)
        if limit is not None and now - self.last_pulse > limit:
            self.log.warn("node at {loc} silent for {s:.1f}s: abandoned", loc=self.location, s=now - self.last_pulse)
            self.abandoned = True
            scheduler._node_abandoned(self)
            proto, self.proto = self.proto, None
            self._stop_pulses()
            proto.transport.abortConnection()
            self.state = "lost"
            self._schedule_retry(interval)
            return
        d = self.proto.callRemote(commands.Pulse, interval=float(interval))
        d.addCallbacks(self._pulse_answer, lambda f: None)

    def _pulse_answer(self, answer):
        self.last_pulse = self.scheduler.reactor.seconds()
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


class _Placement:
    """A task waiting for a server: C{where} it may go, and servers to C{avoid} while another exists."""

    __slots__ = ("computation", "cpu", "where", "deferred", "avoid")

    def __init__(self, computation, cpu, where, deferred, avoid=None):
        self.computation = computation
        self.cpu = cpu
        self.where = where
        self.deferred = deferred
        self.avoid = avoid


#: The private scheduler of each reactor (what Computation.schedule() uses by default).
_private = weakref.WeakKeyDictionary()


def private_scheduler(reactor):
    """The private L{Scheduler} running on C{reactor}, or None."""
    return _private.get(reactor)


@implementer(IScheduler)
class Scheduler:
    """
    A private scheduler in this process, on the running reactor. It takes
    the options of the C{dispycos} program under their long names.

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
        #: The key nodes prove (their own secret, else the cluster's, kept apart from what clients prove).
        self.key = auth.key_from_secret(node_secret or secret, auth.NODE)
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
        #: Tasks of this scheduler's computations, counted at the client (L{dispycos.metrics}).
        self.counts = metrics.Counts()
        self.computations_taken = 0
        self.metrics = None
        if metrics_port is not None:
            self.metrics = metrics.serve_private_scheduler(self, metrics_host, metrics_port)
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
            self.discovery = Discovery(reactor, [ip_addr if ip_addr is not None else "127.0.0.1"], udp_port, self.key,
                                       self._discovered, client_key=client_key)
            self.discovery.start()
        for entry in nodes:
            self.add_node(entry)
        self.probe()
        runtime.lost_hooks.append(self._connection_lost)
        if private:
            _private[reactor] = self

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
            link.connect()
        elif link.state in ("lost", "unreachable", "refused") and (link._retry is None or not link._retry.active()):
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

    @defer.inlineCallbacks
    def _reserve(self, link, comp):
        if (link.computation is comp or link.proto is None or comp is not self.active
                or link.ignored_by is comp):
            return
        link.computation = comp
        link._start_pulses(now=True)  # at the computation's pulse interval
        try:
            cpus = yield defer.maybeDeferred(comp.allocate, link.info)
        except Exception as e:
            self.log.warn("allocation for node {loc} failed: {e}", loc=link.location, e=e)
            cpus = 0
        if comp is not self.active or link.computation is not comp:
            return
        if cpus <= 0:
            self.log.info("node {loc} not used by computation {c} (allocation)", loc=link.location, c=comp.id)
            link.computation = None
            link.ignored_by = comp
            self._check_refusals(comp)
            return
        try:
            yield self._prepare(link, comp)
        except (SetupError, FileTransferError) as e:
            if comp is self.active:
                self._node_failed(link, comp, e)
            return
        except Exception as e:
            self._declined(link, comp, e)
            return
        if comp is not self.active or link.computation is not comp:
            return
        link.declined = None
        if comp.disable_nodes:
            link.held = (comp, cpus)  # until enable_node(ip, *args), which the status may call
            comp.status(Status.NodeDiscovered, link.info)
            return
        comp.status(Status.NodeDiscovered, link.info)
        yield self._setup_node(link, comp, cpus, None)

    def _declined(self, link, comp, exc):
        """The node would not take C{comp} for now (busy, outside its window): ask again, say why."""
        if link.computation is comp:
            link.computation = None
        link.declined = str(exc)
        if comp is self.active and link.proto is not None:
            self.log.warn("node {loc} could not take the computation: {e}", loc=link.location, e=exc)
            self.reactor.callLater(2, self._reserve, link, comp)

    @defer.inlineCallbacks
    def _prepare(self, link, comp):
        """Hold the node for C{comp} and stream its component files into the node directory."""
        files = [(name, path, os.path.getsize(path)) for name, path in comp.files]
        yield link.call(commands.Prepare, computation=comp.id, files=[[name, size] for name, _, size in files])
        for name, path, _ in files:
            subdir, base = os.path.split(name)
            if link.proto is None:
                raise ConnectionLostError("node %s is gone" % (link.location,))
            yield send_file(link.proto, path, "node", subdir=subdir, overwrite=True, computation=comp.id, name=base)

    @defer.inlineCallbacks
    def _setup_node(self, link, comp, cpus, setup_args):
        link.held = None
        node_setup, server_setup = comp.setup_names()
        try:
            r = yield link.call(
                commands.Reserve, computation=comp.id, key=comp.key, cpus=cpus,
                components=comp.components,
                client=str(self.runtime.location), node_setup=node_setup, server_setup=server_setup,
                setup_args=setup_args, disable_servers=bool(comp.disable_servers),
            )
        except SetupError as e:
            if comp is self.active:
                comp.status_message(DispycosStatus(Status.NodeClosed, link.info, exception=e))
                self._node_failed(link, comp, e)
            return
        except Exception as e:
            self._declined(link, comp, e)
            return
        if comp is not self.active or link.computation is not comp:
            return
        info = copy.copy(link.info)
        info.cpus = len(r["servers"])
        comp.status(Status.NodeInitialized, info)
        self._add_servers(link, comp, [(s["index"], Location.parse(s["location"], 0), s.get("ready", True), s.get("error"))
                                       for s in r["servers"]])

    def _add_servers(self, link, comp, servers):
        """
        Book C{(index, location, ready, error)} servers of C{link}'s node; a
        held server (disable_servers) waits for enable_server, a failed
        server_setup is reported closed.
        """
        # Book every server first: user code may run as soon as the
        # computation hears of one.
        entries = []
        for index, location, ready, failure in servers:
            entry = ServerEntry(link, index, location)
            entry.ready = bool(ready)
            entries.append((entry, failure))
            if failure:
                continue
            old = link.servers.get(index)
            if old is not None and old in self.servers:
                self.servers.remove(old)
            link.servers[index] = entry
            self.servers.append(entry)
            self.runtime.computation_of[location] = comp.id
        for entry, failure in entries:
            if not failure:
                # Connect now, so the first tasks do not wait for the handshake.
                self.runtime.connection(entry.location).addErrback(lambda f: None)
            comp.status(Status.ServerDiscovered, entry.location)
            if failure:
                comp.status_message(DispycosStatus(Status.ServerClosed, entry.location, exception=SetupError(failure)))
            elif entry.ready:
                comp.status(Status.ServerInitialized, entry.location)
        if any(e.ready for e, failure in entries if not failure):
            comp.server_ready()
        self._dispatch()

    def _forget_server(self, entry, status):
        if entry in self.servers:
            self.servers.remove(entry)
        entry.ready = False
        if self.active is not None:
            self.active.status(status, entry.location)

    def _remove_server(self, entry, status, why):
        self._forget_server(entry, status)
        self.runtime._abandon_at(entry.location, why)

    def _server_event(self, link, computation, index, event, location):
        comp = self.active
        if comp is None or comp.id != computation or link.computation is not comp:
            return
        if event == "died":
            entry = link.servers.pop(index, None)
            if entry is not None:
                self._remove_server(entry, Status.ServerDisconnected, "server %s died" % (entry.location,))
        elif event == "initialized":
            self._add_servers(link, comp, [(index, Location.parse(location, 0), True, None)])
        elif event == "closed":
            # Closed in order: its tasks' outcomes reach their clients before
            # its connections close (which abandons whatever is left).
            entry = link.servers.pop(index, None)
            if entry is not None:
                self._forget_server(entry, Status.ServerClosed)
        elif event == "node_closed":
            entries = list(link.servers.values())
            link.servers.clear()
            link.computation = None
            link.ignored_by = comp
            for entry in entries:
                self._forget_server(entry, Status.ServerClosed)
            comp.status(Status.NodeClosed, link.info)
            self._fail_if_no_servers()

    def _connection_lost(self, location):
        # Our connection to a server broke: place nothing there until its node
        # reports it (re)initialized.
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

    def held_node_link(self, comp, where):
        """The connection to node C{where}, held for C{comp} but without servers yet (or None)."""
        for link in self._links_at(comp, where):
            if link.proto is not None and link.proto.connected:
                return link.proto
        return None

    def _links_at(self, comp, where):
        where = str(where)
        return [l for l in self.links.values()
                if where in (l.location.addr, str(l.location), l.info.name if l.info else None)
                and (l.computation is comp or (l.held and l.held[0] is comp))]

    def _entry(self, comp, location):
        location = Location.parse(location, 0)
        for link in self.links.values():
            if link.computation is comp:
                for entry in link.servers.values():
                    if entry.location == location:
                        return entry
        raise NoServerError("no server %s in this computation" % (location,))

    @defer.inlineCallbacks
    def control(self, comp, action, target, args=None, terminate=False, restart=False):
        """
        C{enable_node}, C{enable_server}, C{suspend_node}, C{resume_node},
        C{suspend_server}, C{resume_server}, C{close_server}, C{close_node}
        of a computation; fires with None once applied.
        """
        if comp is not self.active:
            raise ComputationClosed("computation is not active")
        if action in ("enable_node", "suspend_node", "resume_node", "close_node"):
            links = self._links_at(comp, target)
            if not links:
                raise NoServerError("no node %s in this computation" % (target,))
            for link in links:
                if action == "enable_node":
                    if link.held is not None:
                        _, cpus = link.held
                        yield self._setup_node(link, comp, cpus, args)
                    elif link.suspended:
                        self._suspend_node(link, comp, False)
                elif action in ("suspend_node", "resume_node"):
                    self._suspend_node(link, comp, action == "suspend_node")
                else:
                    yield link.call(commands.Release, computation=comp.id, terminate=terminate)
                    self._server_event(link, comp.id, 0, "node_closed", "")
            self._dispatch()
            return
        entry = self._entry(comp, target)
        link = entry.node
        if action == "enable_server":
            if entry.ready:
                if entry.suspended:
                    self._suspend_server(entry, comp, False)
                return
            yield link.call(commands.EnableServer, computation=comp.id, index=entry.index, args=args)
            entry.ready = True
            comp.status(Status.ServerInitialized, entry.location)
            comp.server_ready()
        elif action in ("suspend_server", "resume_server"):
            self._suspend_server(entry, comp, action == "suspend_server")
        elif action == "close_server":
            yield link.call(commands.CloseServer, computation=comp.id, index=entry.index, terminate=terminate,
                            restart=restart)
        else:
            raise DispycosError("unknown action %r" % (action,))
        self._dispatch()

    def _suspend_node(self, link, comp, suspend):
        if link.suspended == suspend:
            return
        link.suspended = suspend
        comp.status(Status.NodeSuspended if suspend else Status.NodeResumed, link.info)

    def _suspend_server(self, entry, comp, suspend):
        if entry.suspended == suspend:
            return
        entry.suspended = suspend
        comp.status(Status.ServerSuspended if suspend else Status.ServerResumed, entry.location)
        link = entry.node
        others = [e for e in link.servers.values() if e.ready]
        if suspend and others and all(e.suspended for e in others):
            self._suspend_node(link, comp, True)
        elif not suspend and link.suspended:
            self._suspend_node(link, comp, False)

    # -- placement ----------------------------------------------------------------

    def place(self, comp, cpu, where=None, avoid=None):
        """
        The L{ServerEntry} to run a task on, booked for it: at once when one
        is free (and no task waits ahead of it), else a Deferred firing with
        it (C{cancel()} takes it off the queue). A CPU task needs a server
        without a CPU task (waiting, first come first served, while there is
        none); least loaded first. C{avoid}: locations not to use while the
        computation has another server (a retried task's earlier ones); such
        a task goes before the tasks waiting their first turn.
        """
        if comp is not self.active:
            return defer.fail(ComputationClosed("computation is not active"))
        if where is not None and not self._known(where):
            return defer.fail(NoServerError("no server at %s" % (where,)))
        queue = self.waiting_cpu if cpu and where is None and not avoid else self.waiting
        p = _Placement(comp, cpu, where, None, avoid or None)
        if not queue or queue is self.waiting:
            entry = self._pick(p)
            if entry is not None:
                self._book(p, entry)
                return entry
        d = p.deferred = defer.Deferred(lambda d: self._unqueue(p))
        queue.append(p)
        self._dispatch()
        if not d.called:
            self._fail_if_no_servers()
        return d

    def _unqueue(self, p):
        """A waiting placement was cancelled: it leaves the queue."""
        for queue in (self.waiting, self.waiting_cpu):
            try:
                queue.remove(p)
            except ValueError:
                pass

    def servers_now(self, comp):
        """The servers of C{comp} that take tasks (a list, at once)."""
        if comp is not self.active:
            return []
        return [e for e in self.servers if e.ready]

    def _known(self, where):
        for entry in self.servers:
            if self._matches(entry, where):
                return True
        return False

    @staticmethod
    def _matches(entry, where):
        if where is None:
            return True
        if isinstance(where, Location):
            return entry.location == where
        where = str(where)
        info = entry.node.info
        return where in (entry.node.location.addr, str(entry.location), info.name if info else None)

    def _usable(self, entry, where):
        return (entry.ready and not entry.suspended and not entry.node.suspended
                and (where is None or self._matches(entry, where)))

    def _pick(self, p):
        best, best_key = None, None
        cpu = p.cpu
        avoid = p.avoid
        if avoid and not any(e.location not in avoid and self._usable(e, p.where) for e in self.servers):
            avoid = None  # no other server: the same one again
        busy = {}  # node -> its servers running a CPU task
        for entry in self.servers:
            if entry.cpu_busy:
                busy[entry.node] = busy.get(entry.node, 0) + 1
        for entry in self.servers:
            if (not entry.ready or entry.suspended or (cpu and entry.cpu_busy) or entry.node.suspended
                    or (p.where is not None and not self._matches(entry, p.where))
                    or (avoid is not None and entry.location in avoid)):
                continue
            node = entry.node
            key = (busy.get(node, 0) / max(len(node.servers), 1), entry.tasks)
            if best is None or key < best_key:
                best, best_key = entry, key
        return best

    def _take_waiting(self):
        waiting = list(self.waiting) + list(self.waiting_cpu)
        self.waiting, self.waiting_cpu = deque(), deque()
        return waiting

    @staticmethod
    def _book(p, entry):
        if p.cpu:
            entry.cpu_busy = True
        entry.tasks += 1
        entry.tasks_submitted += 1

    def _assign(self, p, entry):
        self._book(p, entry)
        p.deferred.callback(entry)

    def _dispatch(self):
        if self.waiting:
            remaining = deque()
            while self.waiting:
                p = self.waiting.popleft()
                if p.deferred.called:
                    continue
                entry = self._pick(p)
                if entry is None:
                    remaining.append(p)
                else:
                    self._assign(p, entry)
            self.waiting = remaining
        # CPU tasks for any server: serve the head while a server is free, and
        # stop at the first that must wait (the rest wait behind it).
        queue = self.waiting_cpu
        while queue:
            p = queue[0]
            if p.deferred.called:
                queue.popleft()
                continue
            entry = self._pick(p)
            if entry is None:
                break
            queue.popleft()
            self._assign(p, entry)

    def task_done(self, entry, cpu):
        """A task placed on C{entry} ended."""
        entry.tasks -= 1
        entry.tasks_done += 1
        if cpu:
            entry.cpu_busy = False
        self._dispatch()

    # -- shutting down -----------------------------------------------------------

    @defer.inlineCallbacks
    def close(self):
        """Close every computation and disconnect from the nodes."""
        self.closed = True
        while self.queue:
            self.queue.popleft().schedule_failed(ScheduleError("scheduler closed"))
        if self.active is not None:
            yield self.active.close(terminate=True)
        for link in self.links.values():
            link.stop()
        if self.discovery is not None:
            self.discovery.stop()
        if self._connection_lost in self.runtime.lost_hooks:
            self.runtime.lost_hooks.remove(self._connection_lost)
        if _private.get(self.reactor) is self:
            del _private[self.reactor]
        if self.metrics is not None:
            yield self.metrics.stop()

    @property
    def metrics_url(self):
        """Where this scheduler serves C{/metrics} (None without C{metrics_port})."""
        return self.metrics.url if self.metrics is not None else None


# Status codes as class attributes, as in pycos programs (msg.status == Scheduler.ComputationClosed).
for _name, _member in Status.__members__.items():
    setattr(Scheduler, _name, _member)
del _name, _member
