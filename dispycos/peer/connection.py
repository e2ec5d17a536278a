# -*- test-case-name: tests.test_core -*-
"""
L{PeerAMP}: a connection between two processes of a computation, and what its
peer may ask of this process (create tasks and groups, deliver messages,
report outcomes, channel operations, termination).
"""

import contextvars

from twisted.internet import defer

from dispycos import config, serialize
from dispycos.errors import DispycosError, MailboxFull, UnknownTaskError
from dispycos.metrics import CountedConnection
from dispycos.peer.outcomes import ABANDONED, encode_outcome
from dispycos.protocol import commands
from dispycos.protocol.arguments import unpack_items
from dispycos.protocol.batching import batch_responder
from dispycos.protocol.streams import StreamingAMP, send_blob


#: Payloads larger than this travel as streams (blobs), not inline.
INLINE_LIMIT = config.MaxInlineBytes - 4096
#: The runtime whose connection is being read: task references unpickled
#: meanwhile belong to it.
_reading = contextvars.ContextVar("dispycos_runtime", default=None)


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

    @batch_responder(commands.RunTasks)
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
    def _group_ended(self, task, start, outcomes, seconds=None, first=None):
        self.runtime.group_outcomes(task, start, outcomes, seconds, first)
        return {}

    @batch_responder(commands.Messages)
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

    @batch_responder(commands.TaskOutput)
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

    @batch_responder(commands.TaskEnded)
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
