# -*- test-case-name: tests.test_core -*-
"""
Messages and requests to tasks in other processes (L{Messaging}, a part of L{dispycos.peer.runtime.Runtime}).
"""

from twisted.internet import defer, task

from dispycos import serialize
from dispycos.errors import DispycosError, MailboxFull, UnknownTaskError
from dispycos.peer.outcomes import ABANDONED, decode_outcome, outcome_result
from dispycos.peer.reactorthread import with_timeout
from dispycos.protocol import commands
from dispycos.protocol.streams import send_blob
from dispycos.peer.connection import INLINE_LIMIT


class Messaging:
    """
    What task references do through the L{Runtime}: messages to tasks
    elsewhere (one-way, batched, or acknowledged with C{deliver}), large ones
    one at a time behind each other, waiting for a task, terminating one.
    """

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
        out (backpressure for fast producers), on the reactor's next turn at
        the earliest; it errbacks when the connection they wait for fails.
        """
        link = self.links.get(ref.location)
        if link is None:
            d = defer.succeed(None)
        elif link.proto is None or not link.proto.connected:
            # Still connecting: what was sent waits for the connection.
            d = self.connection(ref.location).addCallback(self._drained)
        else:
            d = self._drained(link.proto)
        # Always on a later reactor turn: a producer looping over send() and
        # drain() then lets the reactor read and run its timers between
        # rounds (a heartbeat's answer, a connection completing) rather than
        # finding them all overdue at the end.
        return d.addCallback(lambda _: task.deferLater(self.reactor, 0, lambda: None))

    @staticmethod
    def _drained(proto):
        proto.flush()
        return proto.drained()

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
