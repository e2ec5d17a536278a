# -*- test-case-name: tests.test_channels -*-
"""
Channels: named broadcast points. A L{Channel} lives in the process that
created it; it pickles into a reference that any process of the computation
can use to subscribe tasks, send and deliver.
"""

from twisted.internet import defer

from dispycos import serialize
from dispycos.peer.reactorthread import blocking_in_thread, oneway_in_thread, with_timeout
from dispycos.peer.registry import current_runtime
from dispycos.protocol import commands
from dispycos.status import Location


def _rebuild_channel(addr, port, name):
    runtime = current_runtime(create=False)
    location = Location(addr, port)
    if runtime is not None and runtime.location == location and name in runtime.channels:
        return runtime.channels[name]
    return ChannelRef(location, name, runtime)


class _ChannelAPI:
    location = None
    name = ""

    def __reduce__(self):
        return (_rebuild_channel, (self.location.addr, self.location.port, self.name))

    def __repr__(self):
        return "<channel %s@%s>" % (self.name, self.location)


class Channel(_ChannelAPI):
    """
    A channel named C{name} in this process. Tasks anywhere in the
    computation subscribe to it; C{send} broadcasts to every subscriber;
    C{deliver(msg, n=k)} waits for at least C{k} subscribers and fires with
    how many got the message.
    """

    def __init__(self, name):
        self._rt = current_runtime()
        self.name = name
        self.subscribers = []
        self._waiting = []
        if name in self._rt.channels:
            raise ValueError("a channel named %r exists in this process" % (name,))
        self._rt.channels[name] = self

    @property
    def location(self):
        return self._rt.location

    @property
    def reactor(self):
        return self._rt.reactor

    def close(self):
        """Forget the channel (its subscribers stay untouched)."""
        self._rt.channels.pop(self.name, None)

    @blocking_in_thread
    def subscribe(self, task):
        """Deferred firing once C{task} gets the channel's messages."""
        if task not in self.subscribers:
            self.subscribers.append(task)
        self._wake()
        return defer.succeed(len(self.subscribers))

    @blocking_in_thread
    def unsubscribe(self, task):
        """Deferred firing once C{task} no longer gets the channel's messages."""
        if task in self.subscribers:
            self.subscribers.remove(task)
        return defer.succeed(len(self.subscribers))

    def _wake(self):
        waiting, self._waiting = self._waiting, []
        for n, d in waiting:
            if d.called:
                continue
            if len(self.subscribers) >= n:
                d.callback(None)
            else:
                self._waiting.append((n, d))

    @oneway_in_thread
    def send(self, msg):
        """Send C{msg} to every subscriber (no acknowledgement)."""
        for task in list(self.subscribers):
            try:
                task.send(msg)
            except Exception:
                pass

    @blocking_in_thread
    def deliver(self, msg, timeout=None, n=0):
        """
        Deferred firing with the number of subscribers that got C{msg}, once
        at least C{n} are subscribed; errbacks L{TimeoutError} after
        C{timeout} seconds.
        """
        return defer.ensureDeferred(self._deliver(msg, timeout, n))

    async def _deliver(self, msg, timeout, n):
        if len(self.subscribers) < n:
            d = defer.Deferred()
            self._waiting.append((n, d))
            await with_timeout(d, timeout, self._rt.reactor, "channel %s waiting for %d subscribers" % (self.name, n))
        results = await defer.DeferredList([defer.maybeDeferred(t.deliver, msg, timeout) for t in list(self.subscribers)],
                                           consumeErrors=True)
        return sum(1 for ok, _ in results if ok)


class ChannelRef(_ChannelAPI):
    """A channel owned by another process of the computation."""

    def __init__(self, location, name, runtime=None):
        self.location = location
        self.name = name
        self._rt = runtime

    def _runtime(self):
        return self._rt or current_runtime()

    @property
    def reactor(self):
        return self._runtime().reactor

    def _op(self, op, task=None):
        blob = serialize.dumps(task, "task") if task is not None else None
        return self._runtime().call(self.location, commands.ChannelOp, name=self.name, op=op, task=blob).addCallback(
            lambda r: r["count"])

    @blocking_in_thread
    def subscribe(self, task):
        return self._op("subscribe", task)

    @blocking_in_thread
    def unsubscribe(self, task):
        return self._op("unsubscribe", task)

    @oneway_in_thread
    def send(self, msg):
        d = self._runtime().call(self.location, commands.ChannelSend, name=self.name,
                                 message=serialize.dumps(msg, "message"), acked=False, n=0, timeout=None)
        d.addErrback(lambda f: None)

    @blocking_in_thread
    def deliver(self, msg, timeout=None, n=0):
        d = self._runtime().call(self.location, commands.ChannelSend, name=self.name,
                                 message=serialize.dumps(msg, "message"), acked=True, n=n,
                                 timeout=None if timeout is None else float(timeout))
        return d.addCallback(lambda r: r["count"])


