# -*- test-case-name: tests.test_core -*-
"""
The node daemon (C{dispycosnode}): listens for schedulers, runs one server
process per CPU, sets a computation up on them and wipes it afterwards.
"""

import ipaddress
import os
import pickle
import platform
import shutil
import socket
import sys

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from . import config
from .discovery import Discovery
from .errors import DispycosError, FileTransferError
from .protocol import auth, commands
from .protocol.base import DispycosAMP
from .serverpool import ServerSlot
from .status import Location


def is_loopback(host):
    """True when C{host} (name or address) is a loopback address."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


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


def safe_join(root, name):
    """
    C{root}/C{name}, refusing names that are absolute or escape C{root}.

    @raise FileTransferError: for such names.
    """
    if not name or os.path.isabs(name) or "\x00" in name:
        raise FileTransferError("refused file name %r" % (name,))
    path = os.path.realpath(os.path.join(root, name))
    if not path.startswith(os.path.realpath(root) + os.sep):
        raise FileTransferError("refused file name %r: outside the destination" % (name,))
    return path


class NodeProtocol(DispycosAMP):
    """A scheduler's connection to this node."""

    def __init__(self, node):
        super().__init__(node.reactor, keyring=node.keyring, location="")
        self.node = node
        self.last_pulse = node.reactor.seconds()
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
        self.last_pulse = node.reactor.seconds()
        self.pulse_interval = min(max(interval, node.min_pulse_interval), node.max_pulse_interval)
        return {"avail": avail_info(node.dest_path)}

    @commands.Reserve.responder
    def _reserve(self, computation, key, cpus, components, files, client, node_setup=None, server_setup=None,
                 setup_args=None, disable_servers=False):
        self.setup = {"node_setup": node_setup, "server_setup": server_setup, "setup_args": setup_args,
                      "disable_servers": bool(disable_servers)}
        return self.node.reserve(self, computation, key, cpus, components, files, client)

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
                 udp_port=config.NodePort, peers=(), scheduler_port=config.SchedulerPort):
        self.reactor = reactor
        self.cpus = cpus
        self.hosts = list(hosts)
        self.ports = ports
        self.key = auth.key_from_secret(secret)
        self.name = node_name or socket.gethostname()
        self.dest_path = dest_path or config.default_dest_path()
        self.ext_hosts = list(ext_hosts)
        self.debug = debug
        self.spawner = spawner
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
        self.stopping = False
        self.node_dir = None
        self.port = None

    def keyring(self, role, computation):
        return self.key if role == "scheduler" else None

    # -- service ---------------------------------------------------------------

    def startService(self):
        super().startService()
        factory = Factory.forProtocol(lambda: NodeProtocol(self))
        port = self.ports[0]
        for host in self.hosts:
            p = self.reactor.listenTCP(port, factory, interface=host)
            self.listening.append(p)
            port = p.getHost().port
        self.port = port
        self.node_dir = os.path.join(self.dest_path, "node-%d" % self.port)
        shutil.rmtree(self.node_dir, ignore_errors=True)
        os.makedirs(self.node_dir, exist_ok=True)
        bind = self.hosts[0] if len(self.hosts) == 1 else ""
        for i in range(1, self.cpus + 1):
            slot = ServerSlot(self, i, bind, self.ports[i] if i < len(self.ports) else 0, self.spawner)
            self.slots.append(slot)
            slot.spawn()
        d = defer.DeferredList([s.when_ready() for s in self.slots], consumeErrors=True)
        d.addCallback(self._announce_ready)
        self.discovery = Discovery(self.reactor, self.hosts, self.udp_port, self.key, self._discovered)
        self.discovery.start()
        self._watchdog = task.LoopingCall(self._check_scheduler)
        self._watchdog.clock = self.reactor
        self._watchdog.start(self.min_pulse_interval, now=False)

    def _check_scheduler(self):
        """Release a computation whose scheduler fell silent (5 missed pulses)."""
        active = self.active
        if active is None:
            return
        proto = active["proto"]
        interval = proto.pulse_interval or self.max_pulse_interval
        silent = self.reactor.seconds() - proto.last_pulse
        if silent > config.MissedPulses * interval:
            self.log.warn("scheduler of computation {c} silent for {s:.1f}s; releasing it", c=active["computation"], s=silent)
            if proto.connected:
                proto.transport.abortConnection()
            else:
                self.release(active["computation"], True)

    def _announce_ready(self, _):
        addr = self.ext_hosts[0] if self.ext_hosts else (self.hosts[0] or "0.0.0.0")
        line = "dispycosnode %s ready at %s:%d with %d servers" % (self.name, addr, self.port, len(self.slots))
        self.log.info(line)
        try:
            print(line, flush=True)
        except Exception:
            pass
        if self.ready_file:
            with open(self.ready_file, "w") as f:
                f.write("%s:%d\n" % (addr, self.port))
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
        if self._watchdog.running:
            self._watchdog.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for p in self.listening:
            yield p.stopListening()
        self.listening = []
        if self.active is not None:
            try:
                proto = self.active["proto"]
                yield self.release(self.active["computation"], True)
                if proto.connected:
                    proto.transport.loseConnection()
            except Exception:
                self.log.failure("releasing computation at stop")
        yield defer.DeferredList([s.stop(terminate=True) for s in self.slots], consumeErrors=True)
        shutil.rmtree(self.node_dir, ignore_errors=True)
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
        if not expected and active is not None and slot.index in active["slots"]:
            slot.when_ready().addCallback(self._reinit, active).addErrback(
                lambda f: self.log.warn("server {i} restart failed: {f}", i=slot.index, f=f.getErrorMessage())
            )

    @defer.inlineCallbacks
    def _reinit(self, slot, active):
        if self.active is not active:
            return
        location = yield self._init_slot(slot, active)
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

    @defer.inlineCallbacks
    def _init_slot(self, slot, active):
        yield slot.when_ready()
        location = str(Location(active["host"], slot.port))
        yield slot.call(
            commands.Init, computation=active["computation"], key=active["key"],
            components=active["components"], node_dir=self.node_dir,
            server_dir=os.path.join(self.node_dir, "server-%d" % slot.index), location=location,
        )
        active["slots"][slot.index] = location
        return location

    # -- computations ---------------------------------------------------------------

    @defer.inlineCallbacks
    def reserve(self, proto, computation, key, cpus, components, files, client):
        if self.stopping:
            raise DispycosError("node %s is stopping" % self.name)
        if self.active is not None:
            if self.active["computation"] == computation:
                raise DispycosError("computation %s is already set up on node %s" % (computation, self.name))
            raise DispycosError("node %s is busy with another computation" % self.name)
        count = len(self.slots) if cpus <= 0 else min(cpus, len(self.slots))
        active = self.active = {
            "computation": computation, "key": key, "components": components, "proto": proto,
            "host": self._announce_host(proto), "slots": {}, "client": client,
        }
        try:
            self._write_files(files)
            results = yield defer.DeferredList(
                [self._init_slot(slot, active) for slot in self.slots[:count]], consumeErrors=True
            )
        except Exception:
            yield self.release(computation, True)
            raise
        failures = [r for ok, r in results if not ok]
        if not active["slots"]:
            yield self.release(computation, True)
            why = failures[0].getErrorMessage() if failures else "no server"
            raise DispycosError("node %s could not set up the computation: %s" % (self.name, why))
        for f in failures:
            self.log.warn("a server could not be set up: {f}", f=f.getErrorMessage())
        servers = [{"index": i, "location": loc} for i, loc in sorted(active["slots"].items())]
        self.log.info("computation {c} set up on {n} servers", c=computation, n=len(servers))
        return {"servers": servers, "node_dir": self.node_dir}

    def _write_files(self, files):
        for name, data in pickle.loads(files) if files else []:
            path = safe_join(self.node_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    @defer.inlineCallbacks
    def release(self, computation, terminate):
        active = self.active
        if active is None or active["computation"] != computation:
            return
        # Servers leave with the computation; fresh ones replace them, so no
        # global of this computation survives it.
        yield defer.DeferredList([s.stop(terminate) for s in self.slots if s.running], consumeErrors=True)
        if self.active is active:
            self.active = None
        for entry in os.listdir(self.node_dir):
            path = os.path.join(self.node_dir, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.log.info("computation {c} closed", c=computation)
        self.announce()

    def scheduler_lost(self, proto):
        active = self.active
        if active is not None and active["proto"] is proto and not self.stopping:
            self.log.warn("scheduler of computation {c} is gone; releasing it", c=active["computation"])
            self.release(active["computation"], True)
