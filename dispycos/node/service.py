# -*- test-case-name: tests.test_core -*-
"""
The node daemon (C{dispycosnode}): listens for schedulers, runs one server
process per CPU, sets a computation up on them and wipes it afterwards.
"""

import os
import platform
import socket

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dispycos import config, metrics, paths
from dispycos.errors import DispycosError, FileTransferError, SetupError
from dispycos.heartbeat import SilenceWatch
from dispycos.node.console import start_console
from dispycos.node.pidfile import remove_pid_file, write_pid_file
from dispycos.node.serverpool import ServerSlot
from dispycos.node.starters import SpawnStarter
from dispycos.node.service_window import ENDED, IN_SERVICE
from dispycos.protocol import auth, commands
from dispycos.protocol.discovery import Discovery
from dispycos.protocol.receiving import safe_join
from dispycos.protocol.streams import StreamingAMP
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


def avail_info(path=None):
    """The node's free resources, from psutil (None where unknown)."""
    try:
        import psutil

        return {
            "cpu": 100.0 - psutil.cpu_percent(),
            "memory": psutil.virtual_memory().available,
            "disk": psutil.disk_usage(path if path and os.path.isdir(path) else os.getcwd()).free,
            "swap": psutil.swap_memory().free,
        }
    except Exception:
        return {"cpu": None, "memory": None, "disk": None, "swap": None}


class NodeProtocol(metrics.CountedConnection, StreamingAMP):
    """A scheduler's connection to this node (it may also send files for the node directory)."""

    def __init__(self, node):
        super().__init__(node.reactor, lambda dest, computation: node.stream_root(self, dest, computation),
                         node.max_file_size, keyring=node.keyring, location="")
        self.node = node
        self.counts = node.counts
        self.pulse_interval = None

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.node.scheduler_lost(self)

    @commands.NodeInfo.responder
    def _info(self):
        node = self.node
        return {
            "name": node.name,
            "cpus": len(node.slots),
            "platform": platform.platform(),
            "avail": avail_info(node.dest_path),
            "busy": node.active is not None and node.active["proto"] is not self,
        }

    @commands.Pulse.responder
    def _pulse(self, interval):
        node = self.node
        if node.active is not None and node.active["proto"] is self:
            node.scheduler_watch.heard()
        self.pulse_interval = min(max(interval, node.min_pulse_interval), node.max_pulse_interval)
        return {"avail": avail_info(node.dest_path)}

    @commands.Prepare.responder
    def _prepare(self, computation, files):
        self.node.prepare(self, computation, files)
        return {}

    @commands.Reserve.responder
    def _reserve(self, computation, key, cpus, components, client, node_setup=None, server_setup=None,
                 setup_args=None, disable_servers=False):
        setup = {"node_setup": node_setup, "server_setup": server_setup, "setup_args": setup_args,
                 "disable_servers": bool(disable_servers)}
        return self.node.reserve(self, computation, key, cpus, components, client, setup)

    @commands.EnableServer.responder
    def _enable_server(self, computation, index, args):
        return self.node.enable_server(computation, index, args).addCallback(lambda _: {})

    @commands.CloseServer.responder
    def _close_server(self, computation, index, terminate, restart):
        return self.node.close_server(computation, index, terminate, restart).addCallback(lambda _: {})

    @commands.Release.responder
    def _release(self, computation, terminate):
        return self.node.release(computation, terminate).addCallback(lambda _: {})


class NodeService(service.Service):
    """
    A dispycos node.

    @param cpus: number of server processes.
    @param hosts: addresses to listen on.
    @param ports: from L{expand_ports}: the node's port, then each server's.
    @param secret: the shared secret schedulers must prove.
    """

    log = Logger()
    name = "dispycosnode"

    def __init__(self, reactor, cpus, hosts, ports, secret="", node_name=None, dest_path=None,
                 ext_hosts=(), debug=False, spawner=None, ready_file=None,
                 min_pulse_interval=config.MinPulseInterval, max_pulse_interval=config.MaxPulseInterval,
                 udp_port=config.NodePort, peers=(), scheduler_port=config.SchedulerPort,
                 serve=-1, on_exit=None, service_window=None, zombie_period=0, pid_file=None,
                 stdin_commands=False, max_file_size=0, tls_files=(), twisted_tls=False, node_secret=None,
                 sched_normal=False, metrics_port=None, metrics_host="127.0.0.1", log_format="text",
                 starter=None):
        self.reactor = reactor
        # Observability (dispycos.metrics): this node's links, what ended servers had
        # reported; /metrics on metrics_host:metrics_port (None: not served);
        # log_format "json" for the servers' logs too.
        self.counts = metrics.Counts()
        self.retired_counts = metrics.Counts()
        self.computations_taken = 0
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics = None
        self.log_format = log_format
        self.twisted_tls = twisted_tls
        self.sched_normal = sched_normal
        self.max_file_size = max_file_size
        self.tls_files = tuple(tls_files)
        self.tls = TLS(*self.tls_files) if any(self.tls_files) else None
        self.cpus = cpus
        self.hosts = list(hosts)
        self.ports = ports
        # The key schedulers prove: the node secret, else the cluster's secret
        # (else this user's own), for its own use (clients prove another).
        self.key = auth.key_from_secret(node_secret or secret or paths.user_secret(), auth.NODE)
        self.name = node_name or socket.gethostname()
        self.dest_path = dest_path or config.default_dest_path()
        self.ext_hosts = list(ext_hosts)
        self.debug = debug
        self.spawner = spawner
        #: How servers start (an IServerStarter, see dispycos.node.starters): forked by a zygote, or spawned.
        self.starter = starter or SpawnStarter(reactor, spawner)
        self.ready_file = ready_file
        self.min_pulse_interval = min_pulse_interval
        self.max_pulse_interval = max_pulse_interval
        self.udp_port = udp_port
        self.peers = list(peers)
        self.scheduler_port = scheduler_port
        self.discovery = None
        self.slots = []
        self.listening = []
        self.active = None
        #: The active computation's scheduler, heard of at each pulse (L{_scheduler_silent}).
        self.scheduler_watch = SilenceWatch(reactor, self.min_pulse_interval, self._scheduler_limit,
                                            self._scheduler_silent)
        self.stopping = False
        self.node_dir = None
        self.port = None
        # Command-line features (see the "CLI features" section below).
        self.serve = serve
        self.served = 0
        self._on_exit = on_exit
        self.service_window = service_window
        self.service_phase = None
        self.zombie_period = zombie_period or 0
        self.pid_file = pid_file
        self.stdin_commands = stdin_commands
        self.console = None
        self.quitting = False
        self.exiting = False
        self._last_activity = None
        self._zombie_timer = None
        self._window_timer = None

    def keyring(self, role, computation):
        return self.key if role == "scheduler" else None

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
        if active is None or active["proto"] is not proto or active["computation"] != computation:
            raise FileTransferError("node %s is not held for computation %s by this scheduler" % (self.name, computation))
        return self.node_dir

    # -- service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        # Refused (UnsafePathError) unless this user's alone: see dispycos.paths.
        self.dest_path = paths.private_dir(self.dest_path)
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
        self.discovery = Discovery(self.reactor, self.hosts, self.udp_port, self.key, self._discovered)
        self.discovery.start()
        if self.metrics_port is not None:
            self.metrics = metrics.serve_node(self, self.metrics_host, self.metrics_port)
        self.scheduler_watch.start()
        self._start_extras()

    def _scheduler_limit(self):
        """Seconds of silence of the active computation's scheduler before it is let go (5 missed pulses)."""
        active = self.active
        if active is None:
            return None
        return config.MissedPulses * (active["proto"].pulse_interval or self.max_pulse_interval)

    def _scheduler_silent(self, seconds):
        """Release a computation whose scheduler fell silent."""
        self.scheduler_watch.start()  # and go on watching, for the computations to come
        active = self.active
        if active is None:
            return
        proto = active["proto"]
        self.log.warn("scheduler of computation {c} silent for {s:.1f}s; releasing it", c=active["computation"], s=seconds)
        if proto.connected:
            proto.transport.abortConnection()
        else:
            self.release(active["computation"], True)

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
        self.announce()

    # -- discovery ----------------------------------------------------------------

    def _announcement(self):
        host = self.ext_hosts[0] if self.ext_hosts else (self.hosts[0] if len(self.hosts) == 1 else "")
        return {"kind": "announce", "role": "node", "name": self.name, "host": host, "port": self.port,
                "busy": self.active is not None}

    def announce(self):
        """Tell schedulers (broadcast, and every --peer) that this node is here."""
        if self.discovery is None or self.stopping or self.port is None:
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
        self._stop_extras()
        self.scheduler_watch.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for p in self.listening:
            yield p.stopListening()
        self.listening = []
        if self.metrics is not None:
            yield self.metrics.stop()
        if self.active is not None:
            try:
                proto = self.active["proto"]
                yield self.release(self.active["computation"], True)
                if proto.connected:
                    proto.transport.loseConnection()
            except Exception:
                self.log.failure("releasing computation at stop")
        yield defer.DeferredList([s.stop(terminate=True, grace=config.ServerKillGrace) for s in self.slots], consumeErrors=True)
        self.starter.stop()
        paths.remove_tree(self.node_dir)
        self._remove_pid_file()
        yield service.Service.stopService(self)

    # -- servers ------------------------------------------------------------------

    def server_ended(self, slot, expected, reason):
        if self.stopping:
            return
        active = self.active
        if not expected:
            self.log.warn("server {i} (pid {pid}) died: {why}", i=slot.index, pid=slot.pid, why=reason.getErrorMessage())
            if active is not None and slot.index in active["slots"]:
                proto = active["proto"]
                if proto.connected:
                    proto.callRemote(
                        commands.ServerEvent, computation=active["computation"], index=slot.index,
                        event="died", location=active["slots"][slot.index],
                    )
        slot.spawn()
        self._write_pid_file()
        if not expected and active is not None and slot.index in active["slots"]:
            slot.when_ready().addCallback(self._reinit, active).addErrback(
                lambda f: self.log.warn("server {i} restart failed: {f}", i=slot.index, f=f.getErrorMessage())
            )

    @defer.inlineCallbacks
    def _reinit(self, slot, active):
        if self.active is not active:
            return
        location = yield self._init_slot(slot, active)
        server_setup = active["setup"].get("server_setup")
        if server_setup and slot.index in active["server_args"]:
            yield self._run_setup(slot, server_setup, active["server_args"][slot.index], False,
                                  self._server_dir(slot))
        proto = active["proto"]
        if self.active is active and proto.connected:
            proto.callRemote(
                commands.ServerEvent, computation=active["computation"], index=slot.index,
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
        location = str(Location(active["host"], slot.port))
        yield slot.call(
            commands.Init, computation=active["computation"], key=active["key"],
            components=active["components"], node_dir=self.node_dir,
            server_dir=self._server_dir(slot), location=location, node_globals=active.get("node_globals"),
        )
        active["slots"][slot.index] = location
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
        location = active["slots"].get(slot.index)
        if init:
            location = yield self._init_slot(slot, active)
        setup = active["setup"]
        ready = True
        if setup.get("server_setup"):
            if setup.get("disable_servers"):
                ready = False
            else:
                try:
                    yield self._run_setup(slot, setup["server_setup"], None, False, self._server_dir(slot))
                except SetupError as e:
                    active["slots"].pop(slot.index, None)
                    return {"index": slot.index, "location": location, "ready": False, "error": str(e)}
                active["server_args"][slot.index] = None
        return {"index": slot.index, "location": location, "ready": ready}

    # -- computations ---------------------------------------------------------------

    def prepare(self, proto, computation, files):
        """
        Hold this node for C{computation} of C{proto}'s scheduler, which
        streams the component C{files} (C{[name, size]} pairs) next.

        @raise DispycosError: when the node takes no computation now (busy,
            stopping, quitting, outside its service window).
        @raise FileTransferError: naming a file that is over
            C{--max_file_size} or whose name is refused.
        """
        if self.stopping:
            raise DispycosError("node %s is stopping" % self.name)
        self._check_accepting()
        active = self.active
        if active is not None and not (active["computation"] == computation and active["proto"] is proto
                                       and not active["initialized"]):
            if active["computation"] == computation:
                raise DispycosError("computation %s is already set up on node %s" % (computation, self.name))
            raise DispycosError("node %s is busy with another computation" % self.name)
        expected = {}
        for item in files or ():
            try:
                name, size = str(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                raise FileTransferError("bad entry %r in the list of component files" % (item,))
            safe_join(self.node_dir, name)
            if self.max_file_size and size > self.max_file_size:
                raise FileTransferError("component file %s is %d bytes, over node %s's --max_file_size of %d bytes"
                                        % (name, size, self.name, self.max_file_size))
            expected[name] = size
        self._wipe_node_dir()
        self.scheduler_watch.heard()  # its scheduler's silence counts from now
        self.active = {
            "computation": computation, "proto": proto, "host": self._announce_host(proto), "files": expected,
            "initialized": False, "slots": {}, "setup": {}, "server_args": {}, "node_globals": None,
            "client": None, "key": None, "components": None,
        }
        self.log.info("held for computation {c} ({n} component file(s) to come)", c=computation, n=len(expected))

    def _check_files(self, active):
        """Every component file announced in L{prepare} arrived whole (L{SetupError} otherwise)."""
        for name, size in active["files"].items():
            path = safe_join(self.node_dir, name)
            try:
                got = os.path.getsize(path)
            except OSError:
                got = None
            if got != size:
                raise SetupError("component file %s did not arrive at node %s" % (name, self.name))

    @defer.inlineCallbacks
    def reserve(self, proto, computation, key, cpus, components, client, setup):
        if self.stopping:
            raise DispycosError("node %s is stopping" % self.name)
        active = self.active
        if active is None or active["computation"] != computation or active["proto"] is not proto:
            if active is not None and active["computation"] != computation:
                raise DispycosError("node %s is busy with another computation" % self.name)
            raise DispycosError("computation %s was not prepared on node %s" % (computation, self.name))
        if active["initialized"]:
            raise DispycosError("computation %s is already set up on node %s" % (computation, self.name))
        self._check_files(active)
        count = len(self.slots) if cpus <= 0 else min(cpus, len(self.slots))
        active.update(key=key, components=components, client=client, setup=setup, initialized=True)
        slots = self.slots[:count]
        try:
            prepared = []
            if setup.get("node_setup"):
                # Once per node, in its first server, before the others start;
                # the globals it makes reach every server.
                first = slots[0]
                yield self._init_slot(first, active)
                active["node_globals"] = yield self._run_setup(first, setup["node_setup"], setup.get("setup_args"),
                                                               True, self.node_dir)
                prepared.append(self._prepare_slot(first, active, init=False))
                slots = slots[1:]
            results = yield defer.DeferredList(prepared + [self._prepare_slot(slot, active) for slot in slots],
                                               consumeErrors=True)
        except Exception:
            yield self.release(computation, True)
            raise
        failures = [r for ok, r in results if not ok]
        servers = [r for ok, r in results if ok]
        if not active["slots"]:
            yield self.release(computation, True)
            why = failures[0].getErrorMessage() if failures else "; ".join(s.get("error", "") for s in servers)
            raise SetupError("node %s could not set up the computation: %s" % (self.name, why or "no server"))
        for f in failures:
            self.log.warn("a server could not be set up: {f}", f=f.getErrorMessage())
        self.log.info("computation {c} set up on {n} servers", c=computation, n=len(servers))
        active["served"] = True
        self.computations_taken += 1
        self.note_activity()
        return {"servers": servers, "node_dir": self.node_dir}

    def _wipe_node_dir(self):
        """Empty the node directory; links in it (or a link swapped in for it) are removed, never followed."""
        paths.wipe_tree(self.node_dir)

    @defer.inlineCallbacks
    def release(self, computation, terminate):
        active = self.active
        if active is None or active["computation"] != computation:
            return
        # Servers leave with the computation; fresh ones replace them, so no
        # global of this computation survives it (servers it never reached
        # stay). Without terminate, tasks run to their end (no kill after a grace).
        if active["initialized"]:
            grace = config.ServerKillGrace if terminate else None
            yield defer.DeferredList([s.stop(terminate, grace) for s in self.slots if s.running], consumeErrors=True)
        if self.active is active:
            self.active = None
        self._wipe_node_dir()
        self.log.info("computation {c} closed", c=computation)
        self.announce()
        self._released(active)

    def _active_for(self, computation):
        active = self.active
        if active is None or active["computation"] != computation:
            raise DispycosError("computation %s is not on node %s" % (computation, self.name))
        return active

    def _slot(self, index):
        if not 1 <= index <= len(self.slots):
            raise DispycosError("node %s has no server %d" % (self.name, index))
        return self.slots[index - 1]

    @defer.inlineCallbacks
    def enable_server(self, computation, index, args):
        """Run C{server_setup(*args)} on a held server (disable_servers)."""
        active = self._active_for(computation)
        slot = self._slot(index)
        function = active["setup"].get("server_setup")
        if function:
            yield self._run_setup(slot, function, args, False, self._server_dir(slot))
        active["server_args"][index] = args

    def _tell(self, active, index, event, location=""):
        proto = active["proto"]
        if self.active is active and proto.connected:
            proto.callRemote(commands.ServerEvent, computation=active["computation"], index=index, event=event,
                             location=location)

    @defer.inlineCallbacks
    def close_server(self, computation, index, terminate=False, restart=False):
        """
        Close one server of the computation (its tasks end or are terminated);
        with C{restart} a fresh process takes its place in the computation.
        """
        active = self._active_for(computation)
        slot = self._slot(index)
        location = active["slots"].pop(index, None)
        if location is None:
            return
        yield slot.stop(terminate, grace=config.ServerKillGrace if terminate else None)
        self._tell(active, index, "closed", location)
        if restart and self.active is active:
            try:
                yield self._reinit(slot, active)
            except Exception as e:
                self.log.warn("server {i} could not restart: {e}", i=index, e=e)

    def close_request(self, slot, node, terminate, restart):
        """A task called C{dispycos_close_server()} or C{dispycos_close_node()}."""
        active = self.active
        if active is None or slot.index not in active["slots"]:
            return
        if node:
            self.log.info("a task closes node {n} for computation {c}", n=self.name, c=active["computation"])
            self._tell(active, 0, "node_closed")
            self.release(active["computation"], terminate)
        else:
            self.close_server(active["computation"], slot.index, terminate, restart).addErrback(
                lambda f: self.log.warn("closing server {i}: {f}", i=slot.index, f=f.getErrorMessage()))

    def scheduler_lost(self, proto):
        active = self.active
        if active is not None and active["proto"] is proto and not self.stopping:
            self.log.warn("scheduler of computation {c} is gone; releasing it", c=active["computation"])
            self.release(active["computation"], True)

    # -- CLI features: --serve, service window, zombie period, pid file, console ----

    def _start_extras(self):
        self._write_pid_file()
        if self.service_window is not None:
            self.service_phase = self.service_window.phase(self._local_now())
            self.log.info("service window ({w}): node is {p}", w=self.service_window, p=self.service_phase)
            self._arm_window()
        if self.stdin_commands:
            # "auto": only when stdin is a terminal we are in the foreground of
            # (checked now: twistd may have daemonized since makeService).
            self.console = start_console(self, require_terminal=self.stdin_commands == "auto")

    def _stop_extras(self):
        for timer in (self._zombie_timer, self._window_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._zombie_timer = self._window_timer = None
        if self.console is not None:
            self.console.stop()

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
        if active.pop("served", False):
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
        self.log.info("closing computation {c}{why}", c=active["computation"], why=(": " + why) if why else "")
        slots = sorted(active["slots"].items())

        def tell(result):
            # Every server is reported closed, then the node itself: the
            # scheduler then books the node free (one-way events: nothing
            # to wait for).
            proto = active["proto"]
            if proto.connected:
                for index, location in slots:
                    proto.callRemote(commands.ServerEvent, computation=active["computation"], index=index,
                                     event="closed", location=location)
                proto.callRemote(commands.ServerEvent, computation=active["computation"], index=0,
                                 event="node_closed", location="")
            return result

        return self.release(active["computation"], terminate).addBoth(tell)

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
                          c=active["computation"], s=idle, z=self.zombie_period)
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
        if self.pid_file:
            try:
                write_pid_file(self.pid_file, self)
            except Exception as e:
                self.log.warn("cannot write pid file {f}: {e}", f=self.pid_file, e=e)

    def _remove_pid_file(self):
        if self.pid_file:
            remove_pid_file(self.pid_file)
