# -*- test-case-name: tests.test_core -*-
"""
The per-process runtime of a computation's peers (the client and every
server): a listener, authenticated connections to the other processes, the
local tasks, and message routing between them.

Clients and servers talk directly (no relay through the node or scheduler);
small one-way messages are batched per connection.
"""

import itertools
import tempfile
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from . import serialize
from . import config
from .errors import MailboxFull, PayloadTooLarge, ComputationClosed, ConnectionLostError, DispycosError, UnknownTaskError
from .protocol import commands
from .protocol.arguments import unpack_items
from .status import Location
from .streams import StreamingAMP, send_blob
from .tls import connect as tls_connect
from .tls import listen as tls_listen
from .tasks import ABANDONED, set_reactor_thread, decode_outcome, encode_outcome, error_outcome, outcome_result, with_timeout

#: How many finished tasks' outcomes a process keeps for C{WaitTask}.
KEEP_FINISHED = 10000
#: ... and at most about this many bytes of them.
KEEP_BYTES = 64 * 1024 * 1024
#: Payloads larger than this travel as streams (blobs), not inline.
INLINE_LIMIT = config.MaxInlineBytes - 4096

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


class PeerAMP(StreamingAMP):
    """A connection between two processes of a computation."""

    def __init__(self, runtime, listening):
        super().__init__(
            runtime.reactor,
            runtime.stream_root,
            runtime.max_file_size,
            keyring=runtime.keyring if listening else None,
            location=str(runtime.location),
        )
        self.runtime = runtime
        self.peer_loc = None

    def authenticated_as_listener(self):
        self.runtime._accepted(self)

    # -- flow control: the transport tells us when its buffer is full ------------
    # (A separate producer object: AMP's own pauseProducing/paused stop it
    # from reading, which is not what a full write buffer should do.)

    def connectionMade(self):
        super().connectionMade()
        self.writes = _WriteWatcher()
        try:
            self.transport.registerProducer(self.writes, True)
        except Exception:
            pass

    @property
    def backed_up(self):
        writes = getattr(self, "writes", None)
        return writes is not None and writes.paused

    def drained(self):
        """Deferred firing once what we wrote to the peer has mostly gone out."""
        if not self.backed_up or not self.connected:
            return defer.succeed(None)
        return self.writes.wait()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if getattr(self, "writes", None) is not None:
            self.writes.resumeProducing()
        self.runtime._lost(self)

    @commands.ChannelOp.responder
    def _channel_op(self, name, op, task):
        from .channels import channel_op

        return channel_op(self.runtime, name, op, task)

    @commands.ChannelSend.responder
    def _channel_send(self, name, message, acked, n, timeout):
        from .channels import channel_send

        return channel_send(self.runtime, name, message, acked, n, timeout)

    # -- tasks -------------------------------------------------------------------------

    @commands.RunTask.responder
    def _run_task(self, function, code, args, args_blob=None):
        if self.runtime.executor is None:
            raise DispycosError("this process does not run tasks")
        return self.runtime.executor(self, function, code, self.payload(args, args_blob))

    @commands.Messages.responder
    def _messages(self, batch):
        tasks = self.runtime.tasks
        refused = set()
        unknown = set()
        for tid, blob in unpack_items(batch):
            task = tasks.get(tid)
            if task is None:
                unknown.add(tid)
                continue
            if tid in refused:
                continue
            try:
                msg = serialize.loads(blob)
            except Exception as e:
                self.log.warn("message for task {tid} could not be unpickled: {e!r}", tid=tid, e=e)
                continue
            try:
                task._put(msg)
            except MailboxFull as e:
                refused.add(tid)
                self.log.warn("{e}", e=e)
                self.callRemote(commands.MessagesRefused, task=tid, reason=str(e))
        if unknown:
            self.log.warn("messages for {n} unknown task(s) dropped (e.g. {tid})", n=len(unknown), tid=min(unknown))
        return {}

    @commands.MessagesRefused.responder
    def _messages_refused(self, task, reason):
        if self.peer_loc is not None:
            self.runtime.refused[(self.peer_loc, task)] = reason
        return {}

    @commands.Deliver.responder
    def _deliver(self, task, message, message_blob=None):
        message = self.payload(message, message_blob)
        t = self.runtime.tasks.get(task)
        if t is None:
            raise UnknownTaskError("no task %d at %s" % (task, self.runtime.location))
        try:
            msg = serialize.loads(message)
        except Exception as e:
            raise DispycosError("the message could not be unpickled here: %s: %s" % (type(e).__name__, e))
        if not t._put(msg):
            raise UnknownTaskError("task %d at %s has ended" % (task, self.runtime.location))
        return {}

    @commands.TaskEnded.responder
    def _task_ended(self, batch):
        for tid, blob in unpack_items(batch):
            self.runtime._remote_outcome(self.peer_loc, tid, blob)
        return {}

    @commands.TaskEndedBlob.responder
    def _task_ended_blob(self, task, blob):
        try:
            data = self.payload(None, blob)
        except Exception as e:
            self.log.warn("outcome of task {t} lost: {e}", t=task, e=e)
            return {}
        self.runtime._remote_outcome(self.peer_loc, task, data)
        return {}

    @commands.WaitTask.responder
    def _wait_task(self, task):
        rt = self.runtime
        t = rt.tasks.get(task)
        if t is not None:
            d = defer.Deferred()
            t._waiters.append(d)
            return d.addCallback(lambda _: self._outcome_answer(t.outcome))
        if task in rt.finished:
            return self._outcome_answer(rt.finished[task])
        raise UnknownTaskError("no task %d at %s" % (task, rt.location))

    def _outcome_answer(self, outcome):
        blob = encode_outcome(outcome)
        if len(blob) <= INLINE_LIMIT:
            return {"outcome": blob}
        return send_blob(self, blob).addCallback(lambda r: {"outcome": None, "outcome_blob": r[0]})

    @commands.Terminate.responder
    def _terminate(self, task):
        rt = self.runtime
        t = rt.tasks.get(task)
        if t is not None:
            return t.terminate().addCallback(lambda _: {})
        if task in rt.finished:
            return {}
        raise UnknownTaskError("no task %d at %s" % (task, rt.location))


class _WriteWatcher:
    """A push producer that only records when the transport's write buffer is full."""

    paused = False

    def __init__(self):
        self._waiters = []

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    stopProducing = resumeProducing

    def wait(self):
        d = defer.Deferred()
        self._waiters.append(d)
        return d


class _Link:
    """The connection (made or being made) to one location."""

    def __init__(self, location):
        self.location = location
        self.proto = None
        self.connecting = False
        self.pending = []
        self.waiters = []
        self.serial = []


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
        self._finished_sizes = {}
        self._finished_bytes = 0
        self.remote = {}
        self._early = OrderedDict()
        self.executor = None
        self.lost_hooks = []
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._listening = None
        #: Where incoming files land: dest ("client", "server", "node", "blob") → directory,
        #: or a callable (dest, computation) → directory.
        self.file_roots = {}
        self.max_file_size = 0
        self.channels = {}
        #: (location, task id) → why the task refused our messages (mailbox full).
        self.refused = {}
        #: L{dispycos.tls.TLS} for every link of this process, or None.
        self.tls = None
        #: Where this process may connect (None: anywhere); servers without
        #: peers_communicate may reach only their client.
        self.may_connect = None

    def stream_root(self, dest, computation):
        """The directory for incoming stream C{dest} of C{computation}."""
        from .errors import FileTransferError

        root = self.file_roots.get((dest, computation)) or self.file_roots.get(dest)
        if root is None and dest == "blob":
            root = tempfile.gettempdir()
        if root is None:
            raise FileTransferError("this process takes no files for %r" % (dest,))
        return root

    # -- listening ---------------------------------------------------------

    def listen(self):
        """Start listening (synchronously); sets C{location}."""
        factory = Factory.forProtocol(lambda: PeerAMP(self, listening=True))
        self._listening = tls_listen(self.reactor, self.port, factory, self.host, self.tls)
        port = self._listening.getHost().port
        addr = self.announce or (self.host if self.host not in ("", "0.0.0.0") else "127.0.0.1")
        self.location = Location(addr, port)
        return self.location

    def rebind(self, host, port=0):
        """Listen on C{host}:C{port} instead (only before any connection exists)."""
        if self._listening is not None:
            self._listening.stopListening()
            self._listening = None
        self.host = host
        self.port = port
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
        creator = getattr(task, "_creator", None)
        blob = encode_outcome(task.outcome) if creator is not None and creator.connected else None
        self._keep_finished(task.tid, task.outcome, len(blob) if blob is not None else 0)
        if blob is not None:
            answer = getattr(task, "_answer", None)
            if answer is not None and len(blob) <= INLINE_LIMIT:
                answer["outcome"] = blob  # ended at once: goes with the RunTask answer
            elif len(blob) > INLINE_LIMIT:
                self._send_large_outcome(creator, task.tid, blob)
            else:
                creator.queue(commands.TaskEnded, task.tid, blob)

    def _keep_finished(self, tid, outcome, size):
        """
        Keep an outcome for later C{WaitTask}s, within a count and a byte
        budget (oldest go first; a large result stays only while it fits).
        """
        self.finished[tid] = outcome
        self._finished_sizes[tid] = size
        self._finished_bytes += size
        while len(self.finished) > 1 and (len(self.finished) > KEEP_FINISHED or self._finished_bytes > KEEP_BYTES):
            old, _ = self.finished.popitem(last=False)
            self._finished_bytes -= self._finished_sizes.pop(old, 0)

    @defer.inlineCallbacks
    def _send_large_outcome(self, proto, tid, blob):
        try:
            sid, _ = yield send_blob(proto, blob)
        except Exception as e:
            self.log.warn("outcome of task {t} could not be sent: {e}", t=tid, e=e)
            small = encode_outcome(error_outcome(PayloadTooLarge("the result of task %d could not be sent: %s" % (tid, e))))
            if proto.connected:
                proto.queue(commands.TaskEnded, tid, small)
            return
        if proto.connected:
            proto.callRemote(commands.TaskEndedBlob, task=tid, blob=sid)

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
            # Bookkeeping first, then the errbacks that wake user code.
            for hook in list(self.lost_hooks):
                hook(loc)
            self._abandon_at(loc, "connection to %s lost" % (loc,))

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
        d = tls_connect(self.reactor, link.location.addr, link.location.port, proto, self.tls)
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
        if self.may_connect is not None and location not in self.links and not self.may_connect(location):
            raise DispycosError(
                "%s is another server: tasks on different servers may message each other only with "
                "Computation(peers_communicate=True)" % (location,))
        link = self.links.get(location)
        if link is None:
            link = self.links[location] = _Link(location)
        if (link.proto is None or not link.proto.connected) and not link.connecting:
            link.proto = None
            self._connect(link)
        return link

    def connection(self, location):
        """Deferred firing with an authenticated connection to C{location}."""
        try:
            link = self._link(location)
        except DispycosError as e:
            return defer.fail(e)
        if link.proto is not None and link.proto.connected:
            return defer.succeed(link.proto)
        d = defer.Deferred()
        link.waiters.append(d)
        return d

    def call(self, location, command, **kw):
        """C{callRemote} on the connection to C{location}."""
        return self.connection(location).addCallback(lambda p: p.callRemote(command, **kw))

    def call_with_payload(self, location, command, name, data, **kw):
        """
        C{callRemote} with the bytes argument C{name} sent inline, or first
        streamed as a blob (argument C{name + "_blob"}) when it is large.
        C{data} is bytes or a list of C{bytes} parts.
        """
        link = self.links.get(location)
        if (link is not None and link.proto is not None and link.proto.connected and isinstance(data, bytes)
                and len(data) <= INLINE_LIMIT):
            kw[name] = data  # the common case, without a generator per call
            return link.proto.callRemote(command, **kw)
        return self._call_with_payload(location, command, name, data, kw)

    @defer.inlineCallbacks
    def _call_with_payload(self, location, command, name, data, kw):
        proto = yield self.connection(location)
        parts = data if isinstance(data, list) else [data]
        if sum(map(len, parts)) > INLINE_LIMIT:
            sid, _ = yield send_blob(proto, parts)
            kw[name] = b""
            kw[name + "_blob"] = sid
        else:
            kw[name] = b"".join(parts)
        result = yield proto.callRemote(command, **kw)
        return result

    # -- what task references do --------------------------------------------------

    def send(self, ref, msg):
        if ref.location == self.location:
            task = self.tasks.get(ref.tid)
            if task is not None:
                task._put(msg)
            return
        reason = self.refused.get((ref.location, ref.tid))
        if reason is not None:
            raise MailboxFull(reason)
        blob = serialize.dumps(msg, "message")
        link = self._link(ref.location)
        if len(blob) > INLINE_LIMIT or link.serial:
            # A large message streams first; later ones wait their turn (order).
            self._serialize(link, ref.tid, blob, None)
        elif link.proto is not None and link.proto.connected:
            link.proto.queue(commands.Messages, ref.tid, blob)
        else:
            link.pending.append((commands.Messages, ref.tid, blob))

    def _serialize(self, link, tid, blob, acked):
        """
        Send behind a large message in flight on C{link}: one at a time, in
        order. C{acked} (a Deferred) makes it a C{deliver}.
        """
        link.serial.append((tid, blob, acked))
        if len(link.serial) == 1:
            self._drain_serial(link)

    @defer.inlineCallbacks
    def _drain_serial(self, link):
        while link.serial:
            tid, blob, acked = link.serial[0]
            try:
                proto = yield self.connection(link.location)
                if len(blob) > INLINE_LIMIT:
                    sid, _ = yield send_blob(proto, blob)
                    r = yield proto.callRemote(commands.Deliver, task=tid, message=b"", message_blob=sid)
                elif acked is not None:
                    r = yield proto.callRemote(commands.Deliver, task=tid, message=blob)
                else:
                    proto.queue(commands.Messages, tid, blob)
                if acked is not None:
                    acked.callback(r)
            except Exception as e:
                if acked is not None:
                    acked.errback(e)
                else:
                    self.log.warn("message to {loc} lost: {e}", loc=link.location, e=e)
            link.serial.pop(0)

    def drain(self, ref):
        """
        Deferred firing once messages queued for C{ref}'s process have gone
        out (backpressure for fast producers); at once when nothing waits.
        """
        link = self.links.get(ref.location)
        if link is None or link.proto is None:
            return defer.succeed(None)
        link.proto.flush()
        return link.proto.drained()

    def backed_up(self, location):
        """True while the connection to C{location} cannot take more (thread-safe read)."""
        link = self.links.get(location)
        return bool(link is not None and link.proto is not None and link.proto.backed_up)

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
        try:
            link = self._link(ref.location)
        except DispycosError as e:
            return defer.fail(e)
        if len(blob) > INLINE_LIMIT or link.serial:
            d = defer.Deferred()
            self._serialize(link, ref.tid, blob, d)
        else:
            d = self.call(ref.location, commands.Deliver, task=ref.tid, message=blob)
        def delivered(_):
            self.refused.pop((ref.location, ref.tid), None)  # it takes messages again
            return 1

        d.addCallback(delivered)
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
        def got(r, proto):
            data = proto.payload(r.get("outcome"), r.get("outcome_blob"))
            return outcome_result(decode_outcome(data), ref)

        d = self.connection(ref.location)
        d.addCallback(lambda p: p.callRemote(commands.WaitTask, task=ref.tid).addCallback(got, p))
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
