# -*- test-case-name: tests.test_core -*-
"""
The per-process runtime of a computation's peers (the client and every
server): a listener, authenticated connections to the other processes, the
local tasks, and message routing between them.

Clients and servers talk directly (no relay through the node or scheduler);
small one-way messages are batched per connection.
"""

import itertools
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from . import serialize
from . import config
from .errors import PayloadTooLarge, ComputationClosed, ConnectionLostError, DispycosError, UnknownTaskError
from .protocol import commands
from .protocol.arguments import unpack_items
from .protocol.base import DispycosAMP
from .status import Location
from .tasks import ABANDONED, set_reactor_thread, decode_outcome, encode_outcome, error_outcome, outcome_result, with_timeout

#: How many finished tasks' outcomes a process keeps for C{WaitTask}.
KEEP_FINISHED = 10000

_current = None


def current_runtime(create=True):
    """
    This process's runtime; a client process gets one (listening on
    loopback) the first time it is needed.
    """
    global _current
    if _current is None and create:
        from twisted.internet import reactor

        _current = Runtime(reactor)
        _current.listen()
    return _current


def set_runtime(runtime):
    """Install C{runtime} as this process's runtime (servers, tests)."""
    global _current
    _current = runtime


class PeerAMP(DispycosAMP):
    """A connection between two processes of a computation."""

    def __init__(self, runtime, listening):
        super().__init__(
            runtime.reactor,
            keyring=runtime.keyring if listening else None,
            location=str(runtime.location),
        )
        self.runtime = runtime
        self.peer_loc = None

    def authenticated_as_listener(self):
        self.runtime._accepted(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.runtime._lost(self)

    @commands.RunTask.responder
    def _run_task(self, function, code, args):
        if self.runtime.executor is None:
            raise DispycosError("this process does not run tasks")
        return self.runtime.executor(self, function, code, args)

    @commands.Messages.responder
    def _messages(self, batch):
        tasks = self.runtime.tasks
        for tid, blob in unpack_items(batch):
            task = tasks.get(tid)
            if task is None:
                self.log.warn("message for unknown task {tid} dropped", tid=tid)
                continue
            try:
                msg = serialize.loads(blob)
            except Exception as e:
                self.log.warn("message for task {tid} could not be unpickled: {e!r}", tid=tid, e=e)
                continue
            task._put(msg)
        return {}

    @commands.Deliver.responder
    def _deliver(self, task, message):
        t = self.runtime.tasks.get(task)
        if t is None:
            raise UnknownTaskError("no task %d at %s" % (task, self.runtime.location))
        if not t._put(serialize.loads(message)):
            raise UnknownTaskError("task %d at %s has ended" % (task, self.runtime.location))
        return {}

    @commands.TaskEnded.responder
    def _task_ended(self, batch):
        for tid, blob in unpack_items(batch):
            self.runtime._remote_outcome(self.peer_loc, tid, blob)
        return {}

    @commands.WaitTask.responder
    def _wait_task(self, task):
        rt = self.runtime
        t = rt.tasks.get(task)
        if t is not None:
            d = defer.Deferred()
            t._waiters.append(d)
            return d.addCallback(lambda _: {"outcome": encode_outcome(t.outcome)})
        if task in rt.finished:
            return {"outcome": encode_outcome(rt.finished[task])}
        raise UnknownTaskError("no task %d at %s" % (task, rt.location))

    @commands.Terminate.responder
    def _terminate(self, task):
        rt = self.runtime
        t = rt.tasks.get(task)
        if t is not None:
            return t.terminate().addCallback(lambda _: {})
        if task in rt.finished:
            return {}
        raise UnknownTaskError("no task %d at %s" % (task, rt.location))


class _Link:
    """The connection (made or being made) to one location."""

    def __init__(self, location):
        self.location = location
        self.proto = None
        self.connecting = False
        self.pending = []
        self.waiters = []


class Runtime:
    """
    Local tasks plus authenticated connections to the other processes of the
    computations this process takes part in.

    @ivar keys: computation id → HMAC key peers of that computation prove.
    @ivar default_computation: the computation to name when connecting to a
        location not in C{computation_of} (a server's only computation).
    @ivar executor: on servers, C{executor(proto, function, code, args)}
        creates a task for C{RunTask}.
    """

    log = Logger()

    def __init__(self, reactor, host="127.0.0.1", port=0, announce=None, threadpool=None):
        self.reactor = reactor
        set_reactor_thread()
        self.host = host
        self.port = port
        self.announce = announce
        self.location = None
        self.tasks = {}
        self._tids = itertools.count(1)
        self.keys = {}
        self.default_computation = ""
        self.computation_of = {}
        self.links = {}
        self.finished = OrderedDict()
        self.remote = {}
        self._early = OrderedDict()
        self.executor = None
        self.lost_hooks = []
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._listening = None

    # -- listening ---------------------------------------------------------

    def listen(self):
        """Start listening (synchronously); sets C{location}."""
        factory = Factory.forProtocol(lambda: PeerAMP(self, listening=True))
        self._listening = self.reactor.listenTCP(self.port, factory, interface=self.host)
        port = self._listening.getHost().port
        addr = self.announce or (self.host if self.host not in ("", "0.0.0.0") else "127.0.0.1")
        self.location = Location(addr, port)
        return self.location

    def rebind(self, host):
        """Listen on C{host} instead (only before any connection exists)."""
        if self._listening is not None:
            self._listening.stopListening()
            self._listening = None
        self.host = host
        self.port = 0
        return self.listen()

    def stop_listening(self):
        if self._listening is not None:
            d = defer.maybeDeferred(self._listening.stopListening)
            self._listening = None
            return d
        return defer.succeed(None)

    def keyring(self, role, computation):
        if role != "peer":
            return None
        return self.keys.get(computation)

    # -- tasks ----------------------------------------------------------------

    def register(self, task):
        tid = next(self._tids)
        self.tasks[tid] = task
        return tid

    def task_done(self, task):
        self.tasks.pop(task.tid, None)
        self.finished[task.tid] = task.outcome
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)
        creator = getattr(task, "_creator", None)
        if creator is not None and creator.connected:
            blob = encode_outcome(task.outcome)
            if len(blob) + 12 > config.MaxInlineBytes:
                blob = encode_outcome(error_outcome(PayloadTooLarge(
                    "the result of task %s/%s is %d bytes, over the inline cap of %d"
                    % (getattr(task, "name", "task"), task.tid, len(blob), config.MaxInlineBytes))))
            creator.queue(commands.TaskEnded, task.tid, blob)

    # -- connections ------------------------------------------------------------

    def _accepted(self, proto):
        try:
            loc = Location.parse(proto.peer_location, 0)
        except Exception:
            return
        proto.peer_loc = loc
        link = self.links.get(loc)
        if link is None:
            link = self.links[loc] = _Link(loc)
        if link.proto is None or not link.proto.connected:
            self._attach(link, proto)
        self.computation_of.setdefault(loc, proto.computation)

    def _attach(self, link, proto):
        link.proto = proto
        link.connecting = False
        pending, link.pending = link.pending, []
        for command, number, blob in pending:
            proto.queue(command, number, blob)
        waiters, link.waiters = link.waiters, []
        for d in waiters:
            d.callback(proto)

    def _lost(self, proto):
        loc = proto.peer_loc
        if loc is None:
            return
        link = self.links.get(loc)
        if link is not None and link.proto is proto:
            del self.links[loc]
            self._abandon_at(loc, "connection to %s lost" % (loc,))
            for hook in list(self.lost_hooks):
                hook(loc)

    def drop(self, location):
        """Abort the connection to C{location} (its tasks are abandoned)."""
        link = self.links.get(location)
        if link is not None and link.proto is not None and link.proto.connected:
            link.proto.transport.abortConnection()

    def _abandon_at(self, loc, why):
        for (where, tid), rt in list(self.remote.items()):
            if where == loc and rt.outcome is None:
                self._settle(rt, (ABANDONED, why))

    def _connect(self, link):
        comp = self.computation_of.get(link.location, self.default_computation)
        key = self.keys.get(comp)
        if key is None:
            return self._link_failed(link, ComputationClosed("no computation to reach %s" % (link.location,)))
        link.connecting = True
        proto = PeerAMP(self, listening=False)
        endpoint = TCP4ClientEndpoint(self.reactor, link.location.addr, link.location.port, timeout=10)
        d = connectProtocol(endpoint, proto)
        d.addCallback(lambda p: p.handshake(key, "peer", comp))

        def ok(_):
            proto.peer_loc = link.location
            if self.links.get(link.location) is not link:
                self.links[link.location] = link
            self._attach(link, proto)

        def failed(f):
            self.log.warn("cannot reach {loc}: {err}", loc=link.location, err=f.getErrorMessage())
            if proto.transport is not None:
                proto.transport.abortConnection()
            self._link_failed(link, ConnectionLostError("cannot reach %s: %s" % (link.location, f.getErrorMessage())))

        d.addCallbacks(ok, failed)

    def _link_failed(self, link, exc):
        link.connecting = False
        link.pending = []
        if self.links.get(link.location) is link:
            del self.links[link.location]
        waiters, link.waiters = link.waiters, []
        for d in waiters:
            d.errback(exc)
        self._abandon_at(link.location, str(exc))

    def _link(self, location):
        link = self.links.get(location)
        if link is None:
            link = self.links[location] = _Link(location)
        if (link.proto is None or not link.proto.connected) and not link.connecting:
            link.proto = None
            self._connect(link)
        return link

    def connection(self, location):
        """Deferred firing with an authenticated connection to C{location}."""
        link = self._link(location)
        if link.proto is not None and link.proto.connected:
            return defer.succeed(link.proto)
        d = defer.Deferred()
        link.waiters.append(d)
        return d

    def call(self, location, command, **kw):
        """C{callRemote} on the connection to C{location}."""
        return self.connection(location).addCallback(lambda p: p.callRemote(command, **kw))

    # -- what task references do --------------------------------------------------

    def send(self, ref, msg):
        if ref.location == self.location:
            task = self.tasks.get(ref.tid)
            if task is not None:
                task._put(msg)
            return
        blob = serialize.dumps(msg, "message")
        link = self._link(ref.location)
        if link.proto is not None and link.proto.connected:
            link.proto.queue(commands.Messages, ref.tid, blob)
        else:
            link.pending.append((commands.Messages, ref.tid, blob))

    def deliver(self, ref, msg, timeout=None):
        if ref.location == self.location:
            task = self.tasks.get(ref.tid)
            if task is None:
                return defer.fail(UnknownTaskError("no task %s" % (ref,)))
            return task.deliver(msg)
        try:
            blob = serialize.dumps(msg, "message")
        except Exception as e:
            return defer.fail(e)
        d = self.call(ref.location, commands.Deliver, task=ref.tid, message=blob)
        d.addCallback(lambda _: 1)
        return with_timeout(d, timeout, self.reactor, "deliver to %s" % (ref,))

    def wait_task(self, ref, timeout=None):
        known = self.remote.get((ref.location, ref.tid))
        if known is not None:
            return known.result(timeout)
        if ref.location == self.location:
            if ref.tid in self.tasks:
                return self.tasks[ref.tid].result(timeout)
            if ref.tid in self.finished:
                return defer.succeed(None).addCallback(lambda _: outcome_result(self.finished[ref.tid], ref))
            return defer.fail(UnknownTaskError("no task %s" % (ref,)))
        d = self.call(ref.location, commands.WaitTask, task=ref.tid)
        d.addCallback(lambda r: outcome_result(decode_outcome(r["outcome"]), ref))
        return with_timeout(d, timeout, self.reactor, "result of %s" % (ref,))

    def terminate(self, ref):
        if ref.location == self.location and ref.tid in self.tasks:
            return self.tasks[ref.tid].terminate()
        return self.call(ref.location, commands.Terminate, task=ref.tid).addCallback(lambda _: None)

    # -- outcomes of tasks this process created elsewhere ---------------------------

    def expect(self, rtask):
        """Track C{rtask} (a L{RemoteTask} just created) for its pushed outcome."""
        key = (rtask.location, rtask.tid)
        self.remote[key] = rtask
        blob = self._early.pop(key, None)
        if blob is not None:
            self._settle(rtask, decode_outcome(blob))
        elif rtask.location not in self.links:
            self._settle(rtask, (ABANDONED, "connection to %s lost" % (rtask.location,)))

    def _remote_outcome(self, loc, tid, blob):
        rt = self.remote.get((loc, tid))
        if rt is None:
            self._early[(loc, tid)] = blob
            while len(self._early) > KEEP_FINISHED:
                self._early.popitem(last=False)
            return
        try:
            outcome = decode_outcome(blob)
        except Exception as e:
            outcome = (ABANDONED, "outcome could not be unpickled: %r" % (e,))
        self._settle(rt, outcome)

    def _settle(self, rtask, outcome):
        self.remote.pop((rtask.location, rtask.tid), None)
        comp = rtask.computation
        rtask._set_outcome(outcome, (lambda: comp._task_ended(rtask)) if comp is not None else None)
