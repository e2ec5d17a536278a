# -*- test-case-name: tests.test_shared -*-
"""
The shared scheduler program (C{dispycos}, C{twistd dispycos}): a
L{Scheduler} that clients of other processes reach over TCP. Their
computations queue and run one at a time, in submission order.
"""

import os
import pickle
import shutil
import socket
import uuid

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from dispycos import config, metrics, paths
from dispycos.errors import ComputationClosed, DispycosError, FileTransferError
from dispycos.heartbeat import SilenceWatch
from dispycos.interfaces import IComputationEvents
from dispycos.protocol import auth
from dispycos.protocol import scheduling
from dispycos.protocol.arguments import unpack_items
from dispycos.protocol.batching import batch_responder
from dispycos.protocol.receiving import safe_join
from dispycos.protocol.streams import StreamingAMP
from dispycos.scheduler import daemonparts
from dispycos.scheduler.core import Scheduler
from dispycos.status import DispycosStatus, Location


@implementer(IComputationEvents)
class RemoteComputation:
    """
    The scheduler's stand-in for a computation whose client is elsewhere.
    Its pickled components pass through unread; its component files are
    kept under the scheduler's C{dest_path} while it exists.
    """

    log = Logger()

    def __init__(self, channel, components, files, options):
        svc = channel.service
        self.channel = channel
        self.components = components
        self.id = uuid.uuid4().hex
        self.files_dir = os.path.join(svc.dest_path, "computation-%s" % self.id)
        self.files = []
        self._sizes = {}
        for item in files or ():
            try:
                name, size = str(item[0]), int(item[1])
            except (TypeError, ValueError, IndexError):
                raise FileTransferError("bad entry %r in the list of component files" % (item,))
            path = safe_join(self.files_dir, name)
            if svc.max_file_size and size > svc.max_file_size:
                raise FileTransferError("component file %s is %d bytes, over the scheduler's --max_file_size "
                                        "of %d bytes" % (name, size, svc.max_file_size))
            self.files.append((name, path))
            self._sizes[name] = size
        self.pulse_interval = min(max(float(options.get("pulse_interval", 10)), config.MinPulseInterval),
                                  config.MaxPulseInterval)
        self.client = options.get("client", "")
        self.allocations = bool(options.get("allocations"))
        self.node_setup = options.get("node_setup")
        self.server_setup = options.get("server_setup")
        self.disable_nodes = bool(options.get("disable_nodes"))
        self.disable_servers = bool(options.get("disable_servers"))
        self.key = None
        self.queued = False
        self._scheduling = True
        self.closed = False
        self.status_task = None
        #: The client's heartbeat (L{scheduling.ClientPulse}): a silent client of the active computation is closed.
        self.watch = SilenceWatch(channel.reactor, config.MinPulseInterval, self._silence_limit, self._silent)
        self.watch.start()

    def _silence_limit(self):
        svc = self.channel.service
        if svc.scheduler.active is not self or svc.zombie_period == 0:
            return None  # only the active computation's; --zombie_period 0: never
        return svc.zombie_period or config.MissedPulses * self.pulse_interval

    def _silent(self, seconds):
        self.log.warn("client of computation {c} silent for {s:.0f}s: closing it", c=self.id, s=seconds)
        self.channel.computations.pop(self.id, None)
        self.close(reason="client silent (zombie)")
        if self.channel.connected:
            self.channel.transport.abortConnection()

    def _send(self, event, key=b"", reason=""):
        if self.channel.connected:
            self.channel.callRemote(scheduling.ComputationEvent, computation=self.id, event=event, key=key, reason=reason)

    # -- IComputationEvents ----------------------------------------------------------

    def scheduling(self):
        return self._scheduling

    def status(self, status, info=None, exception=None):
        self.status_message(DispycosStatus(status, info, exception))

    def status_message(self, msg):
        if self.status_task is not None:  # the scheduler's monitor
            try:
                self.status_task(msg)
            except Exception:
                self.log.failure("monitor failed on {msg}", msg=msg)
        if self.channel.connected and not self.closed:
            self.channel.queue(scheduling.StatusBatch, 0, pickle.dumps(msg))

    # What the monitor may do to the computation it shows.
    def _control(self, action, target):
        return self.channel.service.scheduler.control(self, action, str(target))

    def suspend_node(self, ip):
        return self._control("suspend_node", ip)

    def resume_node(self, ip):
        return self._control("resume_node", ip)

    def suspend_server(self, location):
        return self._control("suspend_server", location)

    def resume_server(self, location):
        return self._control("resume_server", location)

    def setup_names(self):
        return self.node_setup, self.server_setup

    def allocate(self, info):
        if not self.allocations:
            return info.cpus
        avail = info.avail_info
        node = {"addr": info.addr, "name": info.name, "platform": info.platform, "cpus": info.cpus,
                "memory": avail.memory if avail else None, "disk": avail.disk if avail else None}
        d = self.channel.callRemote(scheduling.AllocateNode, computation=self.id, node=node)
        return d.addCallback(lambda r: min(r["cpus"], info.cpus))

    def activated(self):
        self.watch.heard()  # a queued client's silence does not count against it
        self._send("active", key=self.key)
        monitor = self.channel.service.monitor
        if monitor is not None:
            monitor.attach(self)
        if self.disable_nodes or self.disable_servers:
            self.server_ready()

    def server_ready(self):
        if self._scheduling:
            self._scheduling = False
            self.channel.reactor.callLater(0, self._send, "ready")

    def schedule_failed(self, exc):
        if self._scheduling:
            self._scheduling = False
            self._send("failed", reason=str(exc))
            self.channel.service.scheduler.release(self)

    def closed_by_scheduler(self, reason):
        self.close(reason=reason)

    def scheduler_lost(self, exc):
        pass  # the scheduler is this process

    def check_files(self):
        """Every announced component file arrived whole (L{FileTransferError} otherwise)."""
        for name, path in self.files:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = None
            if size != self._sizes[name]:
                raise FileTransferError("component file %s has not arrived at the scheduler" % (name,))

    @defer.inlineCallbacks
    def close(self, await_async=False, terminate=False, reason="closed"):
        if self.closed:
            return
        self.closed = True
        self.watch.stop()
        try:
            yield self.channel.service.scheduler.release(self, terminate=True)
        finally:
            shutil.rmtree(self.files_dir, ignore_errors=True)
        self._send("closed", reason=reason)


class ClientChannel(metrics.CountedConnection, StreamingAMP):
    """One client's connection to the shared scheduler (it streams its component files here)."""

    def __init__(self, svc):
        super().__init__(svc.reactor, self._file_root, svc.max_file_size, keyring=svc.keyring, location="")
        self.service = svc
        self.counts = svc.scheduler.runtime.counts
        self.computations = {}

    def _file_root(self, dest, computation):
        comp = self.computations.get(computation)
        if dest == "blob":
            return self.service.dest_path
        if dest != "scheduler" or comp is None or comp.queued or comp.closed:
            raise FileTransferError("the scheduler takes component files of this client's staged computations only")
        os.makedirs(comp.files_dir, exist_ok=True)
        return comp.files_dir

    def ampBoxReceived(self, box):
        # Any word from the client, not only its pulses, shows it is alive.
        for comp in self.computations.values():
            comp.watch.heard()
        super().ampBoxReceived(box)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        for comp in list(self.computations.values()):
            self.log.info("client of computation {c} is gone; closing it", c=comp.id)
            comp.close(reason="client gone")
        self.computations.clear()

    def _comp(self, computation):
        comp = self.computations.get(computation)
        if comp is None or comp.closed:
            raise ComputationClosed("no computation %s for this client" % (computation,))
        return comp

    @scheduling.Submit.responder
    def _submit(self, components, files, options):
        comp = RemoteComputation(self, components, files, options)
        self.computations[comp.id] = comp
        return {"computation": comp.id}

    @scheduling.Enqueue.responder
    def _enqueue(self, computation):
        comp = self._comp(computation)
        if not comp.queued:
            comp.check_files()
            comp.queued = True
            self.service.scheduler.submit(comp)
        return {}

    @scheduling.Place.responder
    def _place(self, computation, cpu, where, server, avoid=None):
        comp = self._comp(computation)
        target = None
        if where:
            target = Location.parse(where, 0) if server else where
        avoid = frozenset(Location.parse(a, 0) for a in avoid) if avoid else None
        placed = self.service.scheduler.place(comp, cpu, target, avoid)
        if not isinstance(placed, defer.Deferred):
            return {"location": str(placed.location), "node": placed.node_addr}
        return placed.addCallback(lambda entry: {"location": str(entry.location), "node": entry.node_addr})

    @batch_responder(scheduling.TaskDone)
    def _task_done(self, batch):
        scheduler = self.service.scheduler
        if scheduler.active not in self.computations.values():
            # Only the client whose computation has the servers speaks for them.
            return {}
        for cpu, loc in unpack_items(batch):
            entry = scheduler.entry_at(Location.parse(loc.decode(), 0))
            if entry is not None and entry.tasks > 0:
                scheduler.task_done(entry, bool(cpu))
        return {}

    @scheduling.ServerGone.responder
    def _server_gone(self, computation, location):
        scheduler = self.service.scheduler
        comp = self.computations.get(computation)
        if comp is not None and comp is scheduler.active:
            # As for TaskDone: only the client whose computation has the servers speaks for them.
            try:
                where = Location.parse(location, 0)
            except ValueError:
                self.log.warn("ServerGone with a bad location {loc!r}: ignored", loc=location)
            else:
                scheduler.server_unreachable(where)
        return {}

    @scheduling.Query.responder
    def _query(self, computation, what):
        comp = self._comp(computation)
        scheduler = self.service.scheduler
        if what == "servers":
            d = scheduler.servers_of(comp).addCallback(lambda locs: [str(l) for l in locs])
        elif what == "nodes":
            d = scheduler.nodes_of(comp)
        else:
            raise DispycosError("unknown query %r" % (what,))
        return d.addCallback(lambda result: {"result": result})

    @scheduling.Control.responder
    def _control(self, computation, action, target, args, terminate, restart):
        comp = self._comp(computation)
        d = self.service.scheduler.control(comp, action, target, args, terminate, restart)
        return d.addCallback(lambda _: {})

    @scheduling.CloseComputation.responder
    def _close(self, computation, terminate):
        comp = self.computations.pop(computation, None)
        if comp is None:
            return {}
        return comp.close(terminate=terminate).addCallback(lambda _: {})

    @scheduling.ClientPulse.responder
    def _pulse(self, computation):
        comp = self.computations.get(computation)
        if comp is not None:
            comp.watch.heard()
        return {}


class SchedulerService(service.MultiService):
    """
    The shared scheduler: listens for clients on C{tcp_port}, drives nodes
    with a L{Scheduler} (made when it starts). Its named children
    (L{dispycos.scheduler.daemonparts}) start in this order, and stop last
    first, before the scheduler closes: C{"listener"}, then as asked for
    C{"metrics"}, C{"monitor"} and C{"console"}.
    """

    log = Logger()
    name = "dispycos"

    def __init__(self, reactor, hosts=("127.0.0.1",), tcp_port=config.SchedulerPort, secret="", nodes=(),
                 zombie_period=None, udp_port=config.SchedulerPort, ext_hosts=(), stdin_commands=False,
                 http_port=None, name=None, dest_path=None, max_file_size=0, node_secret=None, metrics_port=None,
                 metrics_host="127.0.0.1", **scheduler_options):
        super().__init__()
        self.reactor = reactor
        self.scheduler_name = name or socket.gethostname()
        self._dest_path = dest_path
        self.dest_path = None  # set once listening: <dest_path>/scheduler-<port>
        self.max_file_size = max_file_size
        self.hosts = list(hosts)
        self.tcp_port = tcp_port
        self.secret = secret
        secret = secret or paths.user_secret()
        self.node_secret = node_secret
        #: What clients prove (nodes prove the node key: a client cannot pose as a node).
        self.key = auth.key_from_secret(secret, auth.CLIENT)
        self.nodes = list(nodes)
        self.zombie_period = zombie_period
        self.udp_port = udp_port
        self.ext_hosts = list(ext_hosts)
        self.stdin_commands = stdin_commands
        self.console = None
        self.http_port = http_port
        self.monitor = None
        self.scheduler_options = scheduler_options
        self.scheduler = None
        #: /metrics (L{dispycos.metrics}) on metrics_host:metrics_port; None: not served.
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics = None
        self.port = None
        daemonparts.Listener(ClientChannel).setServiceParent(self)
        if metrics_port is not None:
            metrics.MetricsService(self, lambda d: metrics.serve_shared_scheduler(d, d.metrics_host, d.metrics_port)
                                   ).setServiceParent(self)
        if http_port is not None:
            daemonparts.Monitor().setServiceParent(self)
        if stdin_commands:
            daemonparts.Console().setServiceParent(self)

    def keyring(self, role, computation):
        return self.key if role == "client" else None

    def startService(self):
        self.log.info("dispycos scheduler {name} starting", name=self.scheduler_name)
        self.scheduler = Scheduler(nodes=self.nodes, secret=self.secret, reactor=self.reactor, private=False,
                                   ip_addr=self.hosts[0] or "", udp_port=self.udp_port, name=self.scheduler_name,
                                   zombie_period=self.zombie_period, node_secret=self.node_secret,
                                   client_key=self.key, discover=True, **self.scheduler_options)
        super().startService()  # the children, which use the scheduler

    def quit(self):
        """Close the active computation and stop (the C{quit} command)."""
        self.reactor.stop()

    def status(self):
        """A short text for the C{status} command."""
        s = self.scheduler
        active = s.active.id if s.active is not None else None
        return "scheduler %s at %s:%s: active computation: %s; queued: %d; nodes: %d; servers: %d" % (
            self.scheduler_name, self.hosts[0] or "0.0.0.0", self.port, active, len(s.queue),
            sum(1 for l in s.links.values() if l.state == "connected"), len(s.servers))

    @defer.inlineCallbacks
    def stopService(self):
        try:
            yield super().stopService()  # the children, last first: no new client, no page, no command
            if self.scheduler is not None:
                comp = self.scheduler.active
                if isinstance(comp, RemoteComputation):
                    yield comp.close(reason="scheduler stopping")
                yield self.scheduler.close()
        finally:
            # Clients' files go however the rest ended.
            if self.dest_path is not None:
                paths.remove_tree(self.dest_path)
