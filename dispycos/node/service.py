# -*- test-case-name: tests.test_core -*-
"""
The node daemon (C{dispycosnode}): listens for schedulers, runs one server
process per CPU, sets a computation up on them and wipes it afterwards.
"""

import os
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dispycos import config, metrics, paths
from dispycos.errors import FileTransferError, SetupError
from dispycos.heartbeat import SilenceWatch
from dispycos.node.connection import NodeProtocol
from dispycos.node.hosting import Hosting
from dispycos.node.nodeconfig import NodeConfig
from dispycos.node.policies import NodePolicies
from dispycos.node.serverpool import ServerSlot
from dispycos.node.starters import SpawnStarter
from dispycos.protocol import auth, commands
from dispycos.protocol.discovery import Discovery
from dispycos.protocol.tls import listen as tls_listen, TLS
from dispycos.status import Location


def expand_ports(specs, count):
    """
    The node's port list from C{--tcp_ports} values (C{"n"} or C{"n1-n2"}):
    C{count} ports, the node's first; when too few are listed, ports continue
    after the highest listed. A first port of 0 makes every port dynamic.
    """
    ports = set()
    for spec in specs or []:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError("bad port range %r" % part)
                ports.update(range(lo, hi + 1))
            else:
                ports.add(int(part))
    ports = sorted(ports)
    if not ports:
        ports = [config.NodePort]
    if ports[0] == 0:
        return [0] * count
    while len(ports) < count:
        ports.append(ports[-1] + 1)
    return ports[:count]


def _default_dest_path():
    """L{config.default_dest_path} (a name the node's C{config} argument hides)."""
    return config.default_dest_path()


class NodeService(Hosting, NodePolicies, service.MultiService):
    """
    A dispycos node, set up by a L{NodeConfig} (its fields: the number of
    servers, the addresses and ports to listen on, the secret schedulers must
    prove, the command-line policies...).
    """

    log = Logger()
    name = "dispycosnode"

    def __init__(self, reactor, config=None, *args, **kwargs):
        """
        C{NodeService(reactor, config)} with a L{NodeConfig}; or, as before it,
        with that config's fields as arguments: C{NodeService(reactor, cpus,
        hosts, ports, secret=..., ...)} (then the node builds the config).
        """
        if isinstance(config, NodeConfig):
            if args or kwargs:
                raise TypeError("NodeService takes a NodeConfig or its fields as arguments, not both")
        elif config is None and not args:
            config = NodeConfig(**kwargs)
        else:
            config = NodeConfig(config, *args, **kwargs)
        super().__init__()
        #: The node's settings (a frozen L{NodeConfig}); the attributes below are copied from it.
        self.config = config
        self.reactor = reactor
        # Observability (dispycos.metrics): this node's links, what ended servers had
        # reported; /metrics on metrics_host:metrics_port (None: not served);
        # log_format "json" for the servers' logs too.
        self.counts = metrics.Counts()
        self.retired_counts = metrics.Counts()
        self.computations_taken = 0
        self.metrics_port = config.metrics_port
        self.metrics_host = config.metrics_host
        self.metrics = None
        self.log_format = config.log_format
        self.twisted_tls = config.twisted_tls
        self.sched_normal = config.sched_normal
        self.max_file_size = config.max_file_size
        self.tls_files = tuple(config.tls_files)
        self.tls = TLS(*self.tls_files) if any(self.tls_files) else None
        self.cpus = config.cpus
        self.hosts = list(config.hosts)
        self.ports = list(config.ports)
        # The key schedulers prove: the node secret, else the cluster's secret
        # (else this user's own), for its own use (clients prove another).
        # Stretched in a thread from startService on (see auth.StretchedKey): the
        # node listens and starts its servers meanwhile.
        self._key = auth.StretchedKey(reactor, config.node_secret or config.secret or paths.user_secret(), auth.NODE)
        self.name = config.node_name or socket.gethostname()
        self.dest_path = config.dest_path or _default_dest_path()
        self.ext_hosts = list(config.ext_hosts)
        self.debug = config.debug
        self.spawner = config.spawner
        #: How servers start (an IServerStarter, see dispycos.node.starters): forked by a zygote, or spawned.
        self.starter = config.starter or SpawnStarter(reactor, config.spawner)
        self.ready_file = config.ready_file
        self.min_pulse_interval = config.min_pulse_interval
        self.max_pulse_interval = config.max_pulse_interval
        self.udp_port = config.udp_port
        self.peers = list(config.peers)
        self.scheduler_port = config.scheduler_port
        self.slots = []
        self.listening = []
        self.active = None
        #: The active computation's scheduler, heard of at each pulse (L{_scheduler_silent}).
        self.scheduler_watch = SilenceWatch(reactor, self.min_pulse_interval, self._scheduler_limit,
                                            self._scheduler_silent)
        self.stopping = False
        self.node_dir = None
        self.port = None
        # Command-line features (see dispycos.node.policies).
        self.serve = config.serve
        self.served = 0
        self._on_exit = config.on_exit
        self.service_window = config.service_window
        self.service_phase = None
        self.zombie_period = config.zombie_period or 0
        self.pid_file = config.pid_file
        self.stdin_commands = config.stdin_commands
        self.console = None
        self.quitting = False
        self.exiting = False
        self._last_activity = None
        self._zombie_timer = None
        self._window_timer = None

        # The parts that start once the node listens (its port is in what they
        # send) and stop before it lets its computation go, by name: discovery,
        # /metrics, the heartbeat, then the policies' pid file, service window
        # and console (dispycos.node.policies). The listening ports and the
        # servers are the node's own, not children: the children need the port
        # at start, and the servers outlive them at stop (the computation is let
        # go once nothing more comes in).
        self.discovery = Discovery(reactor, self.hosts, self.udp_port, None, self._discovered)  # key: once stretched
        self.discovery.setName("discovery")
        self.discovery.setServiceParent(self)
        if config.metrics_port is not None:
            metrics.MetricsService(self, lambda node: metrics.serve_node(node, node.metrics_host,
                                                                        node.metrics_port)).setServiceParent(self)
        self.scheduler_watch.setName("heartbeat")
        self.scheduler_watch.setServiceParent(self)
        self._add_policy_services(config)

    @property
    def key(self):
        """The key schedulers prove (stretched now if it is not yet)."""
        return self._key.now()

    def keyring(self, role, computation):
        if role != "scheduler":
            return None
        self._key.start()  # (if the servers are still starting)
        return self._key.value or self._key.wait()

    def _key_stretched(self, key):
        self.discovery.key = key
        return key

    def stream_root(self, proto, dest, computation):
        """
        Files a scheduler's link sends land in the node directory, and only
        for the computation this node is held for by that scheduler.
        """
        active = self.active
        if dest == "blob" and self.node_dir:
            return self.node_dir
        if dest != "node":
            raise FileTransferError("a node takes files for its node directory only, not %r" % (dest,))
        if active is None or active.proto is not proto or active.computation != computation:
            raise FileTransferError("node %s is not held for computation %s by this scheduler" % (self.name, computation))
        return self.node_dir

    # -- service ---------------------------------------------------------------

    def startService(self):
        # Refused (UnsafePathError) unless this user's alone: see dispycos.paths.
        self.dest_path = paths.private_dir(self.dest_path)
        key = self._key.wait().addCallback(self._key_stretched)
        factory = Factory.forProtocol(lambda: NodeProtocol(self))
        port = self.ports[0]
        for host in self.hosts:
            p = tls_listen(self.reactor, port, factory, host, self.tls)
            self.listening.append(p)
            port = p.getHost().port
        self.port = port
        self.node_dir = paths.fresh_dir(self.dest_path, "node-%d" % self.port)
        # Servers listen where the node does, never on more addresses.
        bind = ",".join(self.hosts)
        for i in range(1, self.cpus + 1):
            slot = ServerSlot(self, i, bind, self.ports[i] if i < len(self.ports) else 0, starter=self.starter)
            self.slots.append(slot)
            slot.spawn()
        d = defer.DeferredList([s.when_ready() for s in self.slots], consumeErrors=True)
        d.addCallback(self._announce_ready)
        # The secret is stretched (~50 ms of CPU in a thread) once the servers
        # are up, not while they start, unless a scheduler asks for it first.
        d.addCallback(lambda _: self._key.start())
        # Schedulers hear of the node once it can answer them (its key stretched, its servers up).
        defer.DeferredList([d, key], consumeErrors=True).addCallback(lambda _: self.announce())
        # Then the children, in order: discovery, /metrics, heartbeat, pid file,
        # service window, console.
        super().startService()

    def _scheduler_limit(self):
        """Seconds of silence of the active computation's scheduler before it is let go (5 missed pulses)."""
        active = self.active
        if active is None:
            return None
        return config.MissedPulses * (active.proto.pulse_interval or self.max_pulse_interval)

    def _scheduler_silent(self, seconds):
        """Release a computation whose scheduler fell silent."""
        self.scheduler_watch.start()  # and go on watching, for the computations to come
        active = self.active
        if active is None:
            return
        proto = active.proto
        self.log.warn("scheduler of computation {c} silent for {s:.1f}s; releasing it", c=active.computation, s=seconds)
        if proto.connected:
            proto.transport.abortConnection()
        else:
            self.release(active.computation, True)

    def _announce_ready(self, _):
        addr = self.ext_hosts[0] if self.ext_hosts else (self.hosts[0] or "0.0.0.0")
        line = "dispycosnode %s ready at %s:%d with %d servers" % (self.name, addr, self.port, len(self.slots))
        self.log.info(line)
        if self.log_format != "json":  # (a JSON log has it; its stream has nothing else)
            try:
                print(line, flush=True)
            except Exception:
                pass
        if self.ready_file:
            paths.replace_file(self.ready_file, "%s:%d\n" % (addr, self.port))

    # -- discovery ----------------------------------------------------------------

    def _announcement(self):
        host = self.ext_hosts[0] if self.ext_hosts else (self.hosts[0] if len(self.hosts) == 1 else "")
        return {"kind": "announce", "role": "node", "name": self.name, "host": host, "port": self.port,
                "busy": self.active is not None}

    def announce(self):
        """Tell schedulers (broadcast, and every --peer) that this node is here."""
        if self.stopping or self.port is None:
            return
        msg = self._announcement()
        self.discovery.broadcast(msg, self.scheduler_port)
        for peer in self.peers:
            loc = Location.parse(peer, self.scheduler_port)
            self.discovery.send(msg, (loc.addr, loc.port))

    def _discovered(self, msg, addr):
        if msg.get("kind") == "probe" and msg.get("role") == "scheduler" and self.port is not None:
            reply_port = msg.get("reply_port")
            if isinstance(reply_port, int) and 0 < reply_port < 65536:
                self.discovery.send(self._announcement(), (addr[0], reply_port))

    @defer.inlineCallbacks
    def stopService(self):
        self.stopping = True
        self._stop_extras()  # the policies' timers
        # The children, last first: console, service window, pid file (kept
        # until the servers are gone, removed below), heartbeat, /metrics, discovery.
        yield super().stopService()
        for p in self.listening:
            yield p.stopListening()
        self.listening = []
        if self.active is not None:
            try:
                proto = self.active.proto
                yield self.release(self.active.computation, True)
                if proto.connected:
                    proto.transport.loseConnection()
            except Exception:
                self.log.failure("releasing computation at stop")
        yield defer.DeferredList([s.stop(terminate=True, grace=config.ServerKillGrace) for s in self.slots], consumeErrors=True)
        yield self.starter.stop()  # (the zygote reaped before the node exits)
        paths.remove_tree(self.node_dir)
        self._remove_pid_file()

    # -- servers ------------------------------------------------------------------

    def server_ended(self, slot, expected, reason):
        if self.stopping:
            return
        active = self.active
        if not expected:
            self.log.warn("server {i} (pid {pid}) died: {why}", i=slot.index, pid=slot.pid, why=reason.getErrorMessage())
            if active is not None and slot.index in active.slots:
                proto = active.proto
                if proto.connected:
                    proto.callRemote(
                        commands.ServerEvent, computation=active.computation, index=slot.index,
                        event="died", location=active.slots[slot.index],
                    )
        slot.spawn()
        self._write_pid_file()
        if not expected and active is not None and slot.index in active.slots:
            slot.when_ready().addCallback(self._reinit, active).addErrback(
                lambda f: self.log.warn("server {i} restart failed: {f}", i=slot.index, f=f.getErrorMessage())
            )

    @defer.inlineCallbacks
    def _reinit(self, slot, active):
        if self.active is not active:
            return
        location = yield self._init_slot(slot, active)
        server_setup = active.setup.get("server_setup")
        if server_setup and slot.index in active.server_args:
            yield self._run_setup(slot, server_setup, active.server_args[slot.index], False,
                                  self._server_dir(slot))
        proto = active.proto
        if self.active is active and proto.connected:
            proto.callRemote(
                commands.ServerEvent, computation=active.computation, index=slot.index,
                event="initialized", location=location,
            )

    def _announce_host(self, proto):
        if self.ext_hosts:
            return self.ext_hosts[0]
        return proto.transport.getHost().host

    def _server_dir(self, slot):
        return os.path.join(self.node_dir, "server-%d" % slot.index)

    @defer.inlineCallbacks
    def _init_slot(self, slot, active):
        yield slot.when_ready()
        location = str(Location(active.host, slot.port))
        yield slot.call(
            commands.Init, computation=active.computation, key=active.key,
            components=active.components, node_dir=self.node_dir,
            server_dir=self._server_dir(slot), location=location, node_globals=active.node_globals,
        )
        active.slots[slot.index] = location
        return location

    @defer.inlineCallbacks
    def _run_setup(self, slot, function, args, node_level, cwd):
        """Run a setup function on C{slot}'s server; L{SetupError} when it fails."""
        try:
            r = yield slot.call(commands.RunSetup, function=function, args=args, node_level=node_level, cwd=cwd)
        except SetupError:
            raise
        except Exception as e:
            raise SetupError("%s on node %s: %s" % (function, self.name, e))
        return r.get("globals")

    @defer.inlineCallbacks
    def _prepare_slot(self, slot, active, init=True):
        """Init a server; run server_setup unless servers wait for enable_server."""
        location = active.slots.get(slot.index)
        if init:
            location = yield self._init_slot(slot, active)
        setup = active.setup
        ready = True
        if setup.get("server_setup"):
            if setup.get("disable_servers"):
                ready = False
            else:
                try:
                    yield self._run_setup(slot, setup["server_setup"], None, False, self._server_dir(slot))
                except SetupError as e:
                    active.slots.pop(slot.index, None)
                    return {"index": slot.index, "location": location, "ready": False, "error": str(e)}
                active.server_args[slot.index] = None
        return {"index": slot.index, "location": location, "ready": ready}
