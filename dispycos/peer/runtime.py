# -*- test-case-name: tests.test_core -*-
"""
The per-process runtime of a computation's peers (the client and every
server): a listener, authenticated connections to the other processes, the
local tasks, and message routing between them.

Clients and servers talk directly (no relay through the node or scheduler);
small one-way messages are batched per connection.
"""

import contextvars
import itertools
import weakref
from collections import OrderedDict

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dispycos import config, serialize
from dispycos.errors import (ComputationClosed, ConnectionLostError, DispycosError, FileTransferError, MailboxFull,
                             PayloadTooLarge, UnknownTaskError)
from dispycos.metrics import CountedConnection, Counts
from dispycos.peer.outcomes import (ABANDONED, OK, decode_outcome, decode_outcomes, encode_outcome, error_outcome,
                                    outcome_result)
from dispycos.peer.reactorthread import with_timeout
from dispycos.protocol import commands
from dispycos.protocol.arguments import unpack_items
from dispycos.protocol.streams import StreamingAMP, send_blob
from dispycos.protocol.tls import connect as tls_connect, listen as tls_listen
from dispycos.protocol.transport import write_now
from dispycos.status import Location

#: How many finished tasks' outcomes a process keeps for C{WaitTask}.
KEEP_FINISHED = 10000
#: ... and at most about this many bytes of them.
KEEP_BYTES = 64 * 1024 * 1024
#: Payloads larger than this travel as streams (blobs), not inline.
INLINE_LIMIT = config.MaxInlineBytes - 4096
#: The first id of tasks a process creates elsewhere (ids below are its own tasks').
REMOTE_TIDS = 1 << 40

#: Each reactor's runtime (a process normally has one reactor, and one runtime).
_runtimes = weakref.WeakKeyDictionary()
#: The runtime whose connection is being read: task references unpickled
#: meanwhile belong to it.
_reading = contextvars.ContextVar("dispycos_runtime", default=None)


def runtime_for(reactor, create=False):
    """C{reactor}'s runtime; with C{create}, one listening on loopback is made when there is none."""
    runtime = _runtimes.get(reactor)
    if runtime is None and create:
        runtime = Runtime(reactor)
        runtime.listen()
        _runtimes[reactor] = runtime
    return runtime


def set_runtime(runtime):
    """Install C{runtime} as its reactor's runtime (a server's, a scheduler's)."""
    _runtimes[runtime.reactor] = runtime


def forget_runtime(runtime):
    """Stop handing out C{runtime} as its reactor's (the next one needed is a new one)."""
    if _runtimes.get(runtime.reactor) is runtime:
        del _runtimes[runtime.reactor]


def current_runtime(create=True):
    """
    The runtime at hand: the one whose connection is being read, else the
    global reactor's (the public API's default; a client process gets one,
    listening on loopback, the first time it is needed).
    """
    runtime = _reading.get()
    if runtime is not None:
        return runtime
    from twisted.internet import reactor  # the public API's default reactor

    return runtime_for(reactor, create)


class PeerAMP(CountedConnection, StreamingAMP):
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
        self.counts = getattr(runtime, "counts", None)  # (None: a stand-in runtime that counts nothing)
        self.peer_loc = None
        self.flush_group = runtime.queued
        #: Ids of code (L{commands.DefineCode}) sent on this connection.
        self.sent_codes = set()

    def authenticated_as_listener(self):
        self.runtime._accepted(self)

    def ampBoxReceived(self, box):
        token = _reading.set(self.runtime)
        try:
            super().ampBoxReceived(box)
        finally:
            _reading.reset(token)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.runtime._lost(self)

    # -- channels owned here -------------------------------------------------------

    def _channel(self, name):
        channel = self.runtime.channels.get(name)
        if channel is None:
            raise UnknownTaskError("no channel %r at %s" % (name, self.runtime.location))
        return channel

    @commands.ChannelOp.responder
    def _channel_op(self, name, op, task):
        channel = self._channel(name)
        if op == "lookup":
            return {"count": len(channel.subscribers)}
        ref = serialize.loads(task)
        d = channel.subscribe(ref) if op == "subscribe" else channel.unsubscribe(ref)
        return d.addCallback(lambda n: {"count": n})

    @commands.ChannelSend.responder
    def _channel_send(self, name, message, acked, n, timeout):
        channel = self._channel(name)
        msg = serialize.loads(message)
        if not acked and not n:
            channel.send(msg)
            return {"count": len(channel.subscribers)}
        return channel.deliver(msg, timeout, n).addCallback(lambda c: {"count": c})

    # -- tasks -------------------------------------------------------------------------

    @commands.RunTasks.responder
    def _run_tasks(self, batch):
        executor = self.runtime.executor
        if executor is None:
            self.log.warn("{peer} asked a process that runs no tasks to run some", peer=self._peer())
            return {}
        for tid, blob in unpack_items(batch):
            executor.create(self, tid, blob)
        return {}

    @commands.RunTaskBlob.responder
    def _run_task_blob(self, task, blob):
        executor = self.runtime.executor
        if executor is not None:
            try:
                data = self.payload(None, blob)
            except Exception as e:
                self.runtime.creation_failed(self, task, e)
                return {}
            executor.create(self, task, data)
        return {}

    @commands.DefineCode.responder
    def _define_code(self, id, code):
        self.runtime.codes[id] = code
        return {}

    @commands.RunGroup.responder
    def _run_group(self, task, count, calls):
        executor = self.runtime.executor
        if executor is not None:
            executor.create_group(self, task, count, calls)
        return {}

    @commands.GroupEnded.responder
    def _group_ended(self, task, start, outcomes, seconds=None):
        self.runtime.group_outcomes(task, start, outcomes, seconds)
        return {}

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
                task._put(msg, len(blob))
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

    @commands.TaskOutput.responder
    def _task_output(self, batch):
        output = getattr(self.runtime, "task_output", None)
        if output is not None:  # only a client that asked for it (forward_output) writes anything
            for stream, lines in unpack_items(batch):
                output(stream, lines)
        return {}

    @commands.Deliver.responder
    def _deliver(self, task, message, message_blob=None):
        message = self.payload(message, message_blob)
        t = self.runtime.tasks.get(task)
        if t is None:
            raise UnknownTaskError("no task %d at %s" % (task, self.runtime.location))
        size = message.size if message_blob is not None else len(message)
        try:
            msg = serialize.loads(message)
        except Exception as e:
            raise DispycosError("the message could not be unpickled here: %s: %s" % (type(e).__name__, e))
        if not t._put(msg, size):
            raise UnknownTaskError("task %d at %s has ended" % (task, self.runtime.location))
        return {}

    @commands.TaskEnded.responder
    def _task_ended(self, batch):
        outcome = self.runtime.remote_outcome
        for tid, blob in unpack_items(batch):
            outcome(tid, blob)
        return {}

    @commands.TaskEndedBlob.responder
    def _task_ended_blob(self, task, blob):
        try:
            data = self.payload(None, blob)
        except Exception as e:
            self.log.warn("outcome of task {t} lost: {e}", t=task, e=e)
            data = encode_outcome((ABANDONED, "its outcome was lost: %s" % (e,)))
        self.runtime.remote_outcome(task, data)
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
    def _terminate(self, task, grace=None):
        rt = self.runtime
        t = rt.tasks.get(task) or rt.groups.get(task)
        if t is not None:
            ended = t.terminate()
            if grace is not None and rt.executor is not None:
                rt.executor.end_if_stuck(t, ended, grace)
            return ended.addCallback(lambda _: {})
        if task in rt.finished:
            return {}
        raise UnknownTaskError("no task %d at %s" % (task, rt.location))


class _Link:
    """
    The connection (made or being made) to one location, and what waits
    for it: C{pending} one-way entries (sent in order once connected) and
    C{serial} entries behind a large payload in flight (sent one at a time).
    """

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
        self.host = host
        self.port = port
        self.announce = announce
        self.location = None
        self.tasks = {}
        #: Connections with one-way items queued (flushed together at the end of a read).
        self.queued = set()
        self._tids = itertools.count(1)
        #: Ids of tasks this process creates elsewhere (disjoint from the local ones).
        self._remote_tids = itertools.count(REMOTE_TIDS)
        #: Task groups (batches of a map) running here, by their first task id.
        self.groups = {}
        #: Code other processes defined for the tasks they create here: id -> pickled function.
        self.codes = {}
        self.keys = {}
        self.default_computation = ""
        self.computation_of = {}
        self.links = {}
        self.finished = OrderedDict()
        self._finished_sizes = {}
        self._finished_bytes = 0
        #: Tasks (and groups of a map) this process created elsewhere, by id, until they end.
        self.remote = {}
        self.remote_groups = {}
        self.executor = None
        self.lost_hooks = []
        self._threadpool = threadpool
        self._listening = None
        #: Where incoming files land: dest ("client", "server", "node", "blob") → directory,
        #: or a callable (dest, computation) → directory.
        self.file_roots = {}
        self.max_file_size = 0
        self.channels = {}
        #: (location, task id) → why the task refused our messages (mailbox full).
        self.refused = {}
        #: L{dispycos.protocol.tls.TLS} for every link of this process, or None.
        self.tls = None
        #: Where this process may connect (None: anywhere); servers without
        #: peers_communicate may reach only their client.
        self.may_connect = None
        #: This process's connections and, on a server, the tasks it runs (L{dispycos.metrics}).
        self.counts = Counts()
        #: C{task_output(stream, lines)} writes what tasks printed (a client with forward_output), or None.
        self.task_output = None

    @property
    def threadpool(self):
        """Where plain-function tasks run (the reactor's pool unless a server gave its own)."""
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def stream_root(self, dest, computation):
        """The directory for incoming stream C{dest} of C{computation}."""
        root = self.file_roots.get((dest, computation)) or self.file_roots.get(dest)
        if root is None:
            raise FileTransferError("this process takes no files for %r" % (dest,))
        return root

    # -- listening ---------------------------------------------------------

    @property
    def hosts(self):
        """The addresses listened on: C{host}, which may name several, comma-separated."""
        hosts = [h.strip() for h in (self.host or "").split(",")]
        return [""] if "" in hosts else hosts

    def listen(self):
        """Start listening (synchronously) on every one of L{hosts}, one port; sets C{location}."""
        factory = Factory.forProtocol(lambda: PeerAMP(self, listening=True))
        port, self._listening = self.port, []
        for host in self.hosts:
            self._listening.append(tls_listen(self.reactor, port, factory, host, self.tls))
            port = self._listening[0].getHost().port
        first = self.hosts[0]
        addr = self.announce or (first if first not in ("", "0.0.0.0") else "127.0.0.1")
        self.location = Location(addr, port)
        return self.location

    def rebind(self, host, port=0):
        """Listen on C{host}:C{port} instead (only before any connection exists)."""
        for listening in self._listening or ():
            listening.stopListening()
        self._listening = None
        self.host = host
        self.port = port
        return self.listen()

    def stop_listening(self):
        listening, self._listening = self._listening or (), None
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in listening])

    def keyring(self, role, computation):
        if role != "peer":
            return None
        return self.keys.get(computation)

    # -- tasks ----------------------------------------------------------------

    def register(self, task, tid=None):
        """Book C{task} under C{tid} (chosen by its creator elsewhere) or a new local id."""
        if tid is None:
            tid = next(self._tids)
        self.tasks[tid] = task
        return tid

    def next_remote_tid(self):
        """An id for a task this process creates in another process."""
        return next(self._remote_tids)

    def next_remote_tids(self, n):
        """The first of C{n} consecutive ids for tasks this process creates elsewhere."""
        first = next(self._remote_tids)
        if n > 1:
            self._remote_tids = itertools.count(first + n)
        return first

    def task_done(self, task):
        self.tasks.pop(task.tid, None)
        if task._in_group:  # its group reports the outcome
            return
        creator = task._creator
        if creator is not None:  # a task some process created here (not a local or setup task)
            counts = self.counts
            counts.tasks_ended += 1
            if task.outcome[0] != OK:
                counts.ended_badly(task.outcome[0])
        blob = encode_outcome(task.outcome) if creator is not None and creator.connected else None
        self._keep_finished(task.tid, task.outcome, len(blob) if blob is not None else 0)
        if blob is not None:
            self.send_outcome(creator, task.tid, blob)

    def send_outcome(self, proto, tid, blob):
        """Push an encoded outcome to the task's creator."""
        if len(blob) > INLINE_LIMIT:
            self._send_large_outcome(proto, tid, blob)
        else:
            proto.queue(commands.TaskEnded, tid, blob)

    def creation_failed(self, proto, tid, exc):
        """Task C{tid} could not be created here: its creator learns it from its outcome."""
        self.log.warn("task {tid} from {peer} not created: {e}", tid=tid, peer=proto._peer(), e=exc)
        blob = encode_outcome(error_outcome(exc, ""))
        self._keep_finished(tid, decode_outcome(blob), len(blob))
        if proto.connected:
            self.send_outcome(proto, tid, blob)

    def flush_links(self):
        """Write out what is queued on every connection now (before task code runs)."""
        for proto in list(self.queued):
            proto.flush()
        for link in self.links.values():
            proto = link.proto
            if proto is not None and proto.connected:
                write_now(proto.transport)

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
        for entry in pending:
            self._put(proto, entry)
        waiters, link.waiters = link.waiters, []
        for d in waiters:
            d.callback(proto)

    @staticmethod
    def _put(proto, entry):
        """Queue one pending entry on C{proto}: C{(command, number, blob)}, a code definition or a call."""
        command, number, blob = entry
        if command is commands.DefineCode:
            if number not in proto.sent_codes:
                proto.sent_codes.add(number)
                proto.queue_call(commands.DefineCode, id=number, code=blob)
        elif number is None:
            proto.queue_call(command, **blob)
        else:
            proto.queue(command, number, blob)

    def _send(self, link, entry):
        """Send one one-way entry on C{link} now, or once it is connected, in order."""
        proto = link.proto
        if link.serial:
            self._serialize(link, entry)
        elif proto is not None and proto.connected:
            self._put(proto, entry)
        else:
            link.pending.append(entry)

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
        lost = (ABANDONED, why)
        for rt in [t for t in self.remote.values() if t.location == loc]:
            self._settle(rt, lost)
        for group in [g for g in self.remote_groups.values() if g.location == loc]:
            group.abandoned(lost)

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

    # -- creating tasks elsewhere ---------------------------------------------------

    def send_task(self, location, tid, blob, code=None):
        """
        Create task C{tid} at C{location} (one-way, batched): C{blob} is the
        pickled C{(function, args, kwargs)} (bytes, or parts when large);
        C{code} C{(id, pickled function)} goes first when the function is no
        component. A failure to connect abandons the task (its outcome says so).
        """
        link = self._link(location)
        if code is not None:
            self._send(link, (commands.DefineCode, code[0], code[1]))
        if isinstance(blob, list) or len(blob) > INLINE_LIMIT:
            self._serialize(link, (commands.RunTaskBlob, tid, blob))
        else:
            self._send(link, (commands.RunTasks, tid, blob))

    def send_group(self, location, group, calls, code=None):
        """Create the tasks of C{group} (a L{dispycos.client.mapping.RemoteGroup}) at C{location}, run one after another."""
        link = self._link(location)
        self.remote_groups[group.tid] = group
        if code is not None:
            self._send(link, (commands.DefineCode, code[0], code[1]))
        self._send(link, (commands.RunGroup, None, {"task": group.tid, "count": group.count, "calls": calls}))

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
        if len(blob) > INLINE_LIMIT:
            # A large message streams first; later ones wait their turn (order).
            self._serialize(link, (commands.Deliver, ref.tid, (blob, None)))
        else:
            self._send(link, (commands.Messages, ref.tid, blob))

    def _serialize(self, link, entry):
        """
        Send C{entry} behind a large payload in flight on C{link}: one at a
        time, in order. A L{commands.Deliver} entry's blob is C{(message,
        acked)}, C{acked} a Deferred (a C{deliver}) or None (a C{send}).
        """
        link.serial.append(entry)
        if len(link.serial) == 1:
            self._drain_serial(link)

    @defer.inlineCallbacks
    def _drain_serial(self, link):
        while link.serial:
            command, number, blob = link.serial[0]
            try:
                proto = yield self.connection(link.location)
                if command is commands.Deliver:
                    yield self._deliver_on(proto, number, *blob)
                elif command is commands.RunTaskBlob:
                    parts = blob if isinstance(blob, list) else [blob]
                    if sum(map(len, parts)) > INLINE_LIMIT:
                        sid, _ = yield send_blob(proto, parts)
                        proto.queue_call(commands.RunTaskBlob, task=number, blob=sid)
                    else:
                        proto.queue(commands.RunTasks, number, b"".join(parts))
                else:
                    self._put(proto, (command, number, blob))
            except Exception as e:
                if command is commands.Deliver and blob[1] is not None:
                    blob[1].errback(e)
                elif command in (commands.RunTaskBlob, commands.RunTasks):
                    rt = self.remote.get(number)
                    if rt is not None:
                        self._settle(rt, (ABANDONED, "it could not be sent to %s: %s" % (link.location, e)))
                else:
                    self.log.warn("message to {loc} lost: {e}", loc=link.location, e=e)
            link.serial.pop(0)

    @defer.inlineCallbacks
    def _deliver_on(self, proto, tid, blob, acked):
        if len(blob) > INLINE_LIMIT:
            sid, _ = yield send_blob(proto, blob)
            r = yield proto.callRemote(commands.Deliver, task=tid, message=b"", message_blob=sid)
        elif acked is not None:
            r = yield proto.callRemote(commands.Deliver, task=tid, message=blob)
        else:
            proto.queue(commands.Messages, tid, blob)
            r = None
        if acked is not None:
            acked.callback(r)

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
            self._serialize(link, (commands.Deliver, ref.tid, (blob, d)))
        else:
            d = self.call(ref.location, commands.Deliver, task=ref.tid, message=blob)
        def delivered(_):
            self.refused.pop((ref.location, ref.tid), None)  # it takes messages again
            return 1

        d.addCallback(delivered)
        return with_timeout(d, timeout, self.reactor, "deliver to %s" % (ref,))

    def wait_task(self, ref, timeout=None):
        known = self.remote.get(ref.tid)
        if known is not None and known.location == ref.location:
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

    def terminate_group(self, group, grace=None):
        """Terminate what still runs of a group of tasks this process created (see L{terminate})."""
        return self._terminate_at(group.location, group.tid, grace)

    def terminate(self, ref, grace=None):
        """
        Terminate task C{ref}; with C{grace}, its server process ends itself
        if the task has not ended C{grace} seconds later (a plain function in a
        C call), and its node starts a fresh one.
        """
        if ref.location == self.location and ref.tid in self.tasks:
            return self.tasks[ref.tid].terminate()
        return self._terminate_at(ref.location, ref.tid, grace)

    def _terminate_at(self, location, tid, grace):
        kw = {} if grace is None else {"grace": float(grace)}
        return self.call(location, commands.Terminate, task=tid, **kw).addCallback(lambda _: None)

    # -- outcomes of tasks this process created elsewhere ---------------------------

    def expect(self, rtask):
        """Track C{rtask} (a L{RemoteTask} about to be created) for its pushed outcome."""
        self.remote[rtask.tid] = rtask

    def remote_outcome(self, tid, blob):
        rt = self.remote.get(tid)
        if rt is None:
            return  # ended already (terminated, abandoned), or not ours
        try:
            outcome = decode_outcome(blob)
        except Exception as e:
            outcome = (ABANDONED, "outcome could not be unpickled: %r" % (e,))
        self._settle(rt, outcome)

    def group_outcomes(self, tid, start, blob, seconds=None):
        group = self.remote_groups.get(tid)
        if group is None:
            return
        try:
            outcomes = decode_outcomes(blob)
        except Exception as e:
            group.abandoned((ABANDONED, "outcomes could not be unpickled: %r" % (e,)))
            return
        group.outcomes(start, outcomes, seconds)

    def _settle(self, rtask, outcome):
        self.remote.pop(rtask.tid, None)
        rtask._set_outcome(outcome)
