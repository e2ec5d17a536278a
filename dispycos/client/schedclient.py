# -*- test-case-name: tests.test_shared -*-
"""
The client's side of a shared scheduler: L{RemoteScheduler} offers a
L{Computation} what a private L{Scheduler} does, over one authenticated AMP
connection (with heartbeats both ways).
"""

import os
import pickle

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from dispycos import config
from dispycos.errors import ComputationClosed, ConnectionLostError, DispycosError, ScheduleError
from dispycos.heartbeat import SilenceWatch
from dispycos.interfaces import IScheduler
from dispycos.paths import resolve_secret
from dispycos.peer.registry import runtime_for
from dispycos.protocol import auth
from dispycos.protocol import scheduling
from dispycos.protocol.arguments import unpack_items
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.batching import batch_responder
from dispycos.protocol.streams import send_file
from dispycos.protocol.tls import connect as tls_connect
from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo, DispycosStatus, Location, Status


class _SchedulerProtocol(DispycosAMP):
    def __init__(self, owner):
        super().__init__(owner.reactor, location=str(owner.runtime.location))
        self.owner = owner

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.owner._lost(self)

    @scheduling.ComputationEvent.responder
    def _event(self, computation, event, key, reason):
        self.owner._event(computation, event, key, reason)
        return {}

    @scheduling.AllocateNode.responder
    def _allocate(self, computation, node):
        comp = self.owner.comp
        if comp is None or comp.id != computation:
            return {"cpus": 0}
        info = DispycosNodeInfo(node["name"], node["addr"], node["cpus"], node["platform"],
                                DispycosNodeAvailInfo(None, memory=node.get("memory"), disk=node.get("disk")))
        return {"cpus": int(comp.allocate(info))}

    @batch_responder(scheduling.StatusBatch)
    def _statuses(self, batch):
        for _, blob in unpack_items(batch):
            self.owner._status(pickle.loads(blob))
        return {}


class Placed:
    """Where a shared scheduler placed a task."""

    node_name = None

    def __init__(self, location, node_addr):
        self.location = location
        self.node_addr = node_addr


@implementer(IScheduler)
class RemoteScheduler:
    """A shared scheduler at C{location}, for one computation."""

    log = Logger()

    def __init__(self, location, secret, reactor=None, tls=None):
        if reactor is None:
            from twisted.internet import reactor  # the public API's default
        self.reactor = reactor
        self.location = location
        self.key = auth.key_from_secret(resolve_secret(secret), auth.CLIENT)
        self.tls = tls
        self.runtime = runtime_for(reactor, create=True)
        self.dest_path = None
        self.proto = None
        self.comp = None
        self._servers = set()
        self._watch = None
        self._report = "scheduler %s not reached yet" % (location,)

    def node_report(self):
        return " (%s)" % self._report

    # -- connection -------------------------------------------------------------

    @defer.inlineCallbacks
    def submit(self, comp):
        self.comp = comp
        proto = _SchedulerProtocol(self)
        try:
            yield tls_connect(self.reactor, self.location.addr, self.location.port, proto, self.tls)
        except Exception as e:
            self._report = "scheduler %s: %s" % (self.location, e)
            raise ScheduleError("cannot reach the scheduler at %s: %s" % (self.location, e))
        try:
            yield proto.handshake(self.key, "client")
        except Exception as e:
            self._report = "scheduler %s refused: %s" % (self.location, e)
            raise ScheduleError("the scheduler at %s refused this client: %s" % (self.location, e))
        self.proto = proto
        node_setup, server_setup = comp.setup_names()
        options = {"pulse_interval": comp.pulse_interval, "client": str(self.runtime.location),
                   "allocations": comp.allocations, "node_setup": node_setup,
                   "server_setup": server_setup, "disable_nodes": bool(comp.disable_nodes),
                   "disable_servers": bool(comp.disable_servers)}
        files = [(name, path, os.path.getsize(path)) for name, path in comp.files]
        r = yield proto.callRemote(scheduling.Submit, components=comp.components,
                                   files=[[name, size] for name, _, size in files], options=options)
        comp.id = r["computation"]
        # The component files go to the scheduler (it passes them on to nodes), then the computation queues.
        for name, path, _ in files:
            subdir, base = os.path.split(name)
            yield send_file(proto, path, "scheduler", subdir=subdir, overwrite=True, computation=comp.id, name=base)
        yield proto.callRemote(scheduling.Enqueue, computation=comp.id)
        self._report = "queued at scheduler %s" % (self.location,)
        self._start_pulses()
        self.runtime.lost_hooks.append(self._server_gone)

    def _server_gone(self, location):
        """Our runtime found a server of the computation gone: tell the scheduler (a private one hears of it itself)."""
        comp, proto = self.comp, self.proto
        if proto is None or comp is None or comp.id is None or self.runtime.computation_of.get(location) != comp.id:
            return
        proto.queue_call(scheduling.ServerGone, computation=comp.id, location=str(location))

    def _unhook(self):
        if self._server_gone in self.runtime.lost_hooks:
            self.runtime.lost_hooks.remove(self._server_gone)

    def _start_pulses(self):
        interval = self.comp.pulse_interval
        self._watch = SilenceWatch(self.reactor, interval, config.MissedPulses * interval, self._silent, self._pulse)
        self._watch.start()

    def _stop_pulses(self):
        if self._watch is not None:
            self._watch.stop()

    def _pulse(self):
        proto = self.proto
        if proto is not None:
            d = proto.callRemote(scheduling.ClientPulse, computation=self.comp.id or "")
            d.addCallbacks(lambda _: self._watch.heard(), lambda f: None)

    def _silent(self, seconds):
        self.log.warn("scheduler {loc} silent for {s:.1f}s: giving up", loc=self.location, s=seconds)
        if self.proto is not None:
            self.proto.transport.abortConnection()

    def _lost(self, proto):
        if proto is not self.proto:
            return
        self.proto = None
        self._stop_pulses()
        self._unhook()
        comp = self.comp
        if comp is not None:
            comp.scheduler_lost(ConnectionLostError("connection to the scheduler at %s lost" % (self.location,)))

    def _call(self, command, **kw):
        if self.proto is None:
            return defer.fail(ComputationClosed("not connected to the scheduler at %s" % (self.location,)))
        return self.proto.callRemote(command, **kw)

    # -- what the scheduler tells us ------------------------------------------------

    def _event(self, computation, event, key, reason):
        comp = self.comp
        if comp is None or comp.id != computation:
            return
        if event == "active":
            comp.key = key
            self.runtime.keys[comp.id] = key
            self._report = "active at scheduler %s" % (self.location,)
            comp.activated()
        elif event == "ready":
            comp.server_ready()
        elif event == "failed":
            comp.schedule_failed(ScheduleError(reason))
        elif event == "closed":
            comp.closed_by_scheduler(reason)

    def _status(self, msg):
        comp = self.comp
        if comp is None:
            return
        if isinstance(msg, DispycosStatus) and msg.status == Status.ServerInitialized:
            self._servers.add(msg.info)
        if isinstance(msg, DispycosStatus) and msg.status in (
            Status.ServerAbandoned, Status.ServerDisconnected, Status.ServerClosed
        ):
            self._servers.discard(msg.info)
            self.runtime._abandon_at(msg.info, "server %s %s" % (msg.info, msg.status.name))
            if msg.status != Status.ServerClosed:
                self.runtime.drop(msg.info)
        comp.status_message(msg)

    # -- what the computation asks --------------------------------------------------------

    def place(self, comp, cpu, where=None, avoid=None):
        """
        Ask the shared scheduler for a server. C{cancel()} stops waiting; a
        server booked after that is given back at once.
        """
        server = isinstance(where, Location)
        kw = {"avoid": [str(loc) for loc in avoid]} if avoid else {}
        d = self._call(scheduling.Place, computation=comp.id, cpu=cpu, where="" if where is None else str(where),
                       server=server, **kw)
        out = defer.Deferred(lambda _: None)

        def placed(r):
            loc = Location.parse(r["location"], 0)
            self.runtime.computation_of[loc] = comp.id
            booked = Placed(loc, r["node"])
            if out.called:  # cancelled meanwhile
                self.task_done(booked, cpu)
            else:
                out.callback(booked)

        def failed(f):
            if not out.called:
                out.errback(f)

        d.addCallbacks(placed, failed)
        return out

    def held_node_link(self, comp, where):
        """Files for a held node go through a shared scheduler's own link: not from here."""
        return None

    def servers_now(self, comp):
        """The servers of the computation (as its status messages told)."""
        return list(self._servers)

    def task_done(self, placed, cpu):
        if self.proto is not None:
            self.proto.queue(scheduling.TaskDone, int(bool(cpu)), str(placed.location).encode())

    def control(self, comp, action, target, args=None, terminate=False, restart=False):
        return self._call(scheduling.Control, computation=comp.id, action=action, target=target, args=args,
                          terminate=terminate, restart=restart).addCallback(lambda _: None)

    def servers_of(self, comp):
        d = self._call(scheduling.Query, computation=comp.id, what="servers")
        return d.addCallback(lambda r: [Location.parse(x, 0) for x in r["result"]])

    def nodes_of(self, comp):
        return self._call(scheduling.Query, computation=comp.id, what="nodes").addCallback(lambda r: r["result"])

    @defer.inlineCallbacks
    def release(self, comp, terminate=False):
        try:
            if comp.id is not None and self.proto is not None:
                yield self._call(scheduling.CloseComputation, computation=comp.id, terminate=terminate)
        except DispycosError as e:
            self.log.warn("closing at the scheduler failed: {e}", e=e)
        finally:
            if comp.id is not None:
                self.runtime.keys.pop(comp.id, None)
            proto, self.proto = self.proto, None
            self._stop_pulses()
            self._unhook()
            if proto is not None and proto.connected:
                proto.transport.loseConnection()
