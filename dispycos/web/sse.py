# -*- test-case-name: tests.unit.test_web_sse -*-
"""
The monitor's server-sent events (C{GET /events}): a hub that writes every
event to every open stream, with its limits: at most C{max_streams} streams
at once (more are refused), and a stream whose browser does not read is
dropped once more than L{MAX_UNSENT} bytes wait for it. A keepalive comment
goes to every stream every C{keepalive_sec} seconds on the hub's clock.

The hub holds no cluster state: what it sends comes from
L{dispycos.web.model.ClusterModel} through L{EventHub.broadcast}.
"""

import collections
import json

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["EventHub", "EventStream", "MAX_STREAMS", "MAX_UNSENT", "StreamRefused"]

log = Logger()

#: C{/events} streams served at once (the default of C{max_streams})
MAX_STREAMS = 32
#: bytes that may wait for an C{/events} stream that does not read before it is dropped
MAX_UNSENT = 1024 * 1024


class StreamRefused(Exception):
    """No stream for this request (too many, or the hub is closed): C{str()} says why."""


def format_event(seq, name, data, retry=None):
    """One event in the text/event-stream format, as bytes."""
    head = "retry: %d\n" % retry if retry is not None else "id: %d\n" % seq
    return ("%sevent: %s\ndata: %s\n\n" % (head, name, json.dumps(data, default=str))).encode("utf-8")


@implementer(IPushProducer)
class EventStream:
    """
    One C{/events} response, registered as the producer of its connection:
    written to while the connection takes data; while it is paused (its
    send buffer full: the browser does not read) what comes is kept and
    counted in C{unsent}, and once more than C{max_unsent} bytes wait, the
    connection is aborted and the stream dropped.

    The stream learns that its request ended (finished, or its connection
    lost) from C{request.notifyFinish()}.
    """

    def __init__(self, request, hub, max_unsent=MAX_UNSENT):
        self.request = request
        self.hub = hub
        self.max_unsent = max_unsent
        self.paused = False
        self.ended = False
        self.pending = collections.deque()
        self.unsent = 0
        request.notifyFinish().addBoth(self._request_ended)
        request.registerProducer(self, True)

    def _request_ended(self, _):
        self.ended = True
        self.pending.clear()
        self.unsent = 0
        self.hub.drop(self)

    @property
    def open(self):
        """Whether the response may still be written to."""
        return not (self.ended or self.request.finished or self.request.channel is None)

    def write(self, data):
        if not self.open:
            self.hub.drop(self)
        elif self.paused:
            self.pending.append(data)
            self.unsent += len(data)
            if self.unsent > self.max_unsent:
                log.warn("monitor: an event stream has {n} bytes unsent (its browser does not read): dropped",
                         n=self.unsent)
                self.abort()
        else:
            self.request.write(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.pending and not self.paused and self.open:
            data = self.pending.popleft()
            self.unsent -= len(data)
            self.request.write(data)

    def stopProducing(self):
        self.hub.drop(self)

    def abort(self):
        """Drop the stream and its connection at once (what waits for it is let go)."""
        self.pending.clear()
        self.unsent = 0
        self.hub.drop(self)
        channel = self.request.channel
        transport = channel.transport if channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def finish(self):
        """End the response (the hub closes)."""
        self.request.unregisterProducer()
        if self.open:
            self.request.finish()


class EventHub:
    """
    The open event streams and what goes to all of them.

    @param clock: an C{IReactorTime} for the keepalives.
    @param hello: a callable giving the data of the C{hello} event a new
        stream gets first.
    @ivar streams: the open L{EventStream}s.
    """

    def __init__(self, clock, hello=dict, max_streams=MAX_STREAMS, max_unsent=MAX_UNSENT, keepalive_sec=15):
        self.clock = clock
        self.hello = hello
        self.max_streams = max_streams
        self.max_unsent = max_unsent
        self.keepalive_sec = keepalive_sec
        self.streams = []
        self.closed = False
        self.seq = 0
        self._keepalive = task.LoopingCall(self.keepalive)
        self._keepalive.clock = clock

    def start(self):
        """Begin the keepalives (every C{keepalive_sec} seconds)."""
        if not self._keepalive.running and not self.closed:
            self._keepalive.start(self.keepalive_sec, now=False)

    def add(self, request):
        """
        A new stream for C{request} (it gets the C{hello} event); raises
        L{StreamRefused} when closed or C{max_streams} are open.
        """
        if self.closed:
            raise StreamRefused("monitor shut down")
        if len(self.streams) >= self.max_streams:
            raise StreamRefused("too many event streams (%d)" % self.max_streams)
        stream = EventStream(request, self, self.max_unsent)
        self.streams.append(stream)
        stream.write(format_event(None, "hello", self.hello(), retry=3000))
        return stream

    def drop(self, stream):
        if stream in self.streams:
            self.streams.remove(stream)

    def broadcast(self, name, data):
        """Send the event C{name} with C{data} (its C{seq} is the event's id) to every stream."""
        if not self.streams:
            return
        payload = format_event(data.get("seq", 0), name, data)
        self._write_all(payload)

    def keepalive(self):
        self._write_all(b": keepalive\n\n")

    def _write_all(self, payload):
        for stream in list(self.streams):
            try:
                stream.write(payload)
            except Exception:
                log.failure("monitor: writing to an event stream failed")
                self.drop(stream)

    def close(self):
        """End every stream and the keepalives; no stream is accepted from now on."""
        self.closed = True
        if self._keepalive.running:
            self._keepalive.stop()
        for stream in list(self.streams):
            try:
                stream.finish()
            except Exception:
                log.failure("monitor: ending an event stream failed")
        self.streams = []
