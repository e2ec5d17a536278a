# -*- test-case-name: tests.test_observe -*-
"""
C{Computation(forward_output=True)}: what tasks print reaches their client.

On a server of such a computation, C{sys.stdout} and C{sys.stderr} are
replaced (L{install}) by streams that look up who is writing: the sink of
the task whose code runs now, kept in a thread-local variable. A
plain-function task sets it in its worker thread for as long as it runs; a
generator or coroutine task (and a map's group) sets it on the reactor's
thread around each step of its code (L{dispycos.peer.tasks._SinkRunner}), so a
task resumed inside another's step has its own. Writes of code outside any
task go where they went before (the node's stdout and log).

A sink (one per client connection and task name, not per task) cuts what a
task writes into lines (per thread, so the lines of tasks running at once
do not mix), prefixes each with C{[task-name@server] } and hands it to its
connection's L{Forwarder}: a bounded buffer (L{MAX_BYTES}) that the reactor
sends to the client as one-way batches (L{commands.TaskOutput}), in order,
while the connection takes more. When the client does not keep up (the
connection backs up), lines wait there; once the buffer is full, new lines
are dropped and counted, and the first line that fits again (or the end of
the output) comes after one saying how many were dropped. A task's write
never waits for the client: the server goes on running tasks.

At the client, L{write_output} writes the lines to its stdout or stderr.
"""

import sys
import threading
from collections import deque

from twisted.python import threadable

from dispycos.protocol import commands

#: Bytes of lines a connection may hold for a client that does not keep up.
MAX_BYTES = 1024 * 1024
#: Bytes of lines handed to the connection at once.
SEND_BYTES = 256 * 1024
#: Stream numbers on the wire.
STDOUT, STDERR = 1, 2

_local = threading.local()


def current_sink():
    """The sink of the task whose code runs in this thread now, or None."""
    return getattr(_local, "sink", None)


def enter(sink):
    """Make C{sink} this thread's current sink; returns the previous one (for L{leave})."""
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    return previous


def leave(previous):
    _local.sink = previous


def finish_thread(sink):
    """A plain-function task ends in this thread: what it wrote without a newline is a line too."""
    partial = getattr(_local, "partial", None)
    if partial:
        for key in [k for k in partial if k[0] is sink]:
            text = partial.pop(key)
            if text:
                sink.line(key[1], text)


class TaskStream:
    """
    C{sys.stdout}/C{sys.stderr} of a forwarding server: a task's writes go
    to its sink, anything else's to the stream this replaced.
    """

    def __init__(self, stream, number):
        self._stream = stream
        self._number = number

    def write(self, text):
        sink = getattr(_local, "sink", None)
        if sink is None:
            return self._stream.write(text)
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        partial = getattr(_local, "partial", None)
        if partial is None:
            partial = _local.partial = {}
        key = (sink, self._number)
        if "\n" not in text:
            partial[key] = partial.get(key, "") + text
            return len(text)
        lines = (partial.pop(key, "") + text).split("\n")
        rest = lines.pop()
        if rest:
            partial[key] = rest
        for line in lines:
            sink.line(self._number, line)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if getattr(_local, "sink", None) is None:
            self._stream.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):  # fileno, encoding, buffer, ...: the replaced stream's
        return getattr(self._stream, name)


def install():
    """Replace this process's C{sys.stdout} and C{sys.stderr} by L{TaskStream}s (once)."""
    if not isinstance(sys.stdout, TaskStream):
        sys.stdout = TaskStream(sys.stdout, STDOUT)
    if not isinstance(sys.stderr, TaskStream):
        sys.stderr = TaskStream(sys.stderr, STDERR)


class Sink:
    """The lines of the tasks named C{name} that C{forwarder}'s client created."""

    __slots__ = ("forwarder", "prefix")

    def __init__(self, forwarder, name, location):
        self.forwarder = forwarder
        self.prefix = "[%s@%s] " % (name, location)

    def line(self, number, text):
        self.forwarder.put(self, number, (self.prefix + text + "\n").encode("utf-8", "replace"))

    def enter(self):
        """Make this the current sink of this thread (a task's code runs now); the previous one."""
        return enter(self)

    @staticmethod
    def leave(previous):
        leave(previous)

    def thread_done(self):
        """A plain-function task of this sink ends in this thread (see L{finish_thread})."""
        finish_thread(self)


class Forwarder:
    """
    The lines going to one client connection (C{proto}): a bounded buffer
    the reactor empties into the connection while it takes more. C{put}
    may be called from any thread and never waits.
    """

    def __init__(self, reactor, proto, max_bytes=MAX_BYTES):
        self.reactor = reactor
        self.proto = proto
        self.max_bytes = max_bytes
        self.lines = deque()  # (number, bytes)
        self.size = 0
        #: (sink, number) -> lines dropped since the last that fitted.
        self.dropped = {}
        self.lock = threading.Lock()
        self.scheduled = False
        self.waiting = False
        #: Lines dropped in all (for tests and the curious).
        self.total_dropped = 0

    def put(self, sink, number, data):
        with self.lock:
            key = (sink, number)
            if self.size + len(data) > self.max_bytes:
                self.dropped[key] = self.dropped.get(key, 0) + 1
                self.total_dropped += 1
            else:
                if self.dropped.get(key):
                    self._notice(key)
                self.lines.append((number, data))
                self.size += len(data)
            if self.scheduled:
                return
            self.scheduled = True
        if threadable.isInIOThread():
            self.reactor.callLater(0, self.flush)
        else:
            self.reactor.callFromThread(self.flush)

    def _notice(self, key):
        """The line saying how many lines of C{key} were dropped (it always fits: the lock is held)."""
        sink, number = key
        n = self.dropped.pop(key)
        text = "%s... %d line%s of output dropped (the client did not keep up)\n" % (
            sink.prefix, n, "" if n == 1 else "s")
        data = text.encode("utf-8", "replace")
        self.lines.append((number, data))
        self.size += len(data)

    def flush(self):
        """On the reactor: hand what waits to the connection while it takes more."""
        proto = self.proto
        with self.lock:
            self.scheduled = False
            if not proto.connected:
                self.lines.clear()
                self.dropped.clear()
                self.size = 0
                return
            backed_up = proto.backed_up
            batch, more = [], False
            if not backed_up:
                # Room again: the counts of what was dropped go out too.
                for key in list(self.dropped):
                    self._notice(key)
                size = 0
                while self.lines and size < SEND_BYTES:
                    number, data = self.lines.popleft()
                    self.size -= len(data)
                    size += len(data)
                    if batch and batch[-1][0] == number:
                        batch[-1][1].append(data)
                    else:
                        batch.append((number, [data]))
                more = bool(self.lines)
        for number, pieces in batch:
            proto.queue(commands.TaskOutput, number, b"".join(pieces))
        if backed_up or (more and proto.backed_up):
            self._wait(proto)
        elif more:
            with self.lock:
                if self.scheduled:
                    return
                self.scheduled = True
            self.reactor.callLater(0, self.flush)

    def _wait(self, proto):
        """(On the reactor.) Flush again once the connection has drained."""
        if self.waiting:
            return
        self.waiting = True

        def drained(_):
            self.waiting = False
            self.flush()

        proto.drained().addBoth(drained)


class Output:
    """A forwarding server's sinks: one per client connection and task name."""

    def __init__(self, reactor, location):
        self.reactor = reactor
        self.location = location
        self.forwarders = {}
        self.sinks = {}
        install()

    def sink(self, proto, name):
        key = (proto, name)
        sink = self.sinks.get(key)
        if sink is None:
            forwarder = self.forwarders.get(proto)
            if forwarder is None:
                forwarder = self.forwarders[proto] = Forwarder(self.reactor, proto)
            sink = self.sinks[key] = Sink(forwarder, name, self.location)
        return sink


# -- at the client ----------------------------------------------------------------------


def write_output(number, data):
    """Write lines a server forwarded to this process's stdout (1) or stderr (2)."""
    stream = sys.stderr if number == STDERR else sys.stdout
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
    except (OSError, ValueError):
        pass  # a closed stream: nothing to do
