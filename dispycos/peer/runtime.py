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

from twisted.internet import defer, error
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from dispycos.errors import ComputationClosed, ConnectionLostError, DispycosError, FileTransferError, PayloadTooLarge
from dispycos.metrics import Counts
from dispycos.peer.connection import INLINE_LIMIT, PeerAMP
from dispycos.peer.messaging import Messaging
from dispycos.peer.outcomes import ABANDONED, OK, decode_group_outcomes, decode_outcome, encode_outcome, error_outcome
from dispycos.protocol import commands
from dispycos.protocol.batching import FlushGroup
from dispycos.protocol.streams import send_blob
from dispycos.protocol.tls import connect as tls_connect, listen as tls_listen
from dispycos.status import Location

#: How many finished tasks' outcomes a process keeps for C{WaitTask}.
KEEP_FINISHED = 10000
#: ... and at most about this many bytes of them.
KEEP_BYTES = 64 * 1024 * 1024
#: The first id of tasks a process creates elsewhere (ids below are its own tasks').
REMOTE_TIDS = 1 << 40

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


#: How a connection fails when its server is gone (refused: nobody listens; lost: it died meanwhile).
_GONE = (error.ConnectionRefusedError, error.ConnectionLost, error.ConnectionDone, ConnectionLostError)


class Runtime(Messaging):
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
        self.queued = FlushGroup()
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
        #: Called with a location whose connection broke or was refused (a scheduler stops placing there).
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
                proto.write_out()

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
            self._unreachable(loc)
            self._abandon_at(loc, "connection to %s lost" % (loc,))

    def _unreachable(self, loc):
        """Tell the L{lost_hooks} that C{loc} cannot be reached (its connection broke or was never made)."""
        for hook in list(self.lost_hooks):
            hook(loc)

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
            if f.check(*_GONE):
                # Nobody listens there, or the connection broke before the
                # handshake ended: as for a connection that broke later, a
                # scheduler places nothing more there (its node may not have told
                # it yet that the server is gone). A handshake refused or timed out
                # says nothing of the server: only what waited for it fails.
                self._unreachable(link.location)
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
        """Create the tasks of C{group} (a L{dispycos.client.groups.RemoteGroup}) at C{location}, run one after another."""
        link = self._link(location)
        self.remote_groups[group.tid] = group
        if code is not None:
            self._send(link, (commands.DefineCode, code[0], code[1]))
        self._send(link, (commands.RunGroup, None, {"task": group.tid, "count": group.count, "calls": calls}))

    # -- what task references do --------------------------------------------------


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

    def group_outcomes(self, tid, start, blob, seconds=None, first=None):
        group = self.remote_groups.get(tid)
        if group is None:
            return
        try:
            values, bad = decode_group_outcomes(blob)
        except Exception as e:
            group.abandoned((ABANDONED, "outcomes could not be unpickled: %r" % (e,)))
            return
        group.outcomes(start, values, bad, seconds, first)

    def _settle(self, rtask, outcome):
        self.remote.pop(rtask.tid, None)
        rtask._set_outcome(outcome)
