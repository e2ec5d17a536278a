# -*- test-case-name: tests.unit.test_protocol -*-
"""
Batching of small one-way traffic on a L{dispycos.protocol.base.DispycosAMP}
connection: items (task creations, outcomes, messages) are L{Batching.queue}d
and go out together, many per AMP box, on the reactor's next turn or at the
end of whatever is running (L{FlushGroup}); the receiving side hands a
batch box straight to its L{batch_responder}.
"""

import struct

from twisted.protocols import amp

from dispycos import config
from dispycos.errors import PayloadTooLarge
from dispycos.protocol.arguments import pack_items

#: Flush what is queued at once when it holds this many bytes.
BATCH_BYTES = 256 * 1024
#: Largest batch in one box.
BATCH_BOX = 4 * 1024 * 1024
#: The largest value of one AMP key (a larger batch is split over several: see BigBytes).
_AMP_VALUE = 0xFFFF


_LENGTH = struct.Struct(">H")
#: {command: the wire bytes of a batch box up to its value's length}
_PREFIXES = {}


def batch_box(command, data):
    """
    The one-way batch C{command} with C{batch=data} (at most 64 KiB) in
    AMP's wire format: what C{AmpBox.serialize} makes of it, without its
    generic loop (on the path of every task, outcome and message).
    """
    prefix = _PREFIXES.get(command)
    if prefix is None:
        name = command.commandName
        prefix = _PREFIXES[command] = b"".join((_LENGTH.pack(8), b"_command", _LENGTH.pack(len(name)), name,
                                                _LENGTH.pack(5), b"batch"))
    return b"".join((prefix, _LENGTH.pack(len(data)), data, b"\x00\x00"))


def batch_responder(command):
    """
    Decorator for the responder of a one-way batch command (its one
    argument C{batch}, as L{Batching.queue} sends): C{command.responder},
    and the method a box of that command goes to straight from
    L{dispycos.protocol.base.DispycosAMP.ampBoxReceived}, without AMP's
    per-command argument parsing and Deferreds (tens of microseconds per box, on the path of
    every task and message).
    """

    def decorate(method):
        method = command.responder(method)
        method.batch_command = command.commandName
        return method

    return decorate


class FlushGroup(set):
    """
    The connections of one process with one-way items queued (see
    L{Batching.queue}). While something that flushes them all when it is
    done runs - C{with group:} around a read or the start of tasks - what
    is queued joins the group without a reactor call of its own; the
    outermost such block flushes (and writes out) every connection in the
    group when it ends, even when it raised. (The group is its own context
    manager: no generator on the path of every read.)
    """

    #: How many such blocks are running (nested): true while one is.
    flushing = 0

    def __enter__(self):
        self.flushing += 1
        return self

    def __exit__(self, *exc):
        self.flushing -= 1
        if not self.flushing:
            self.flush()
        return False

    def flush(self):
        """Send what every connection of the group queued, now."""
        while self:
            proto = self.pop()
            proto.flush()
            proto.write_out()


class Batching:
    """
    Mixed in before C{amp.AMP}: L{queue} and L{flush} of one-way batches,
    and the table of L{batch_responder}s. The class using it has
    C{reactor} and C{connected}.
    """

    #: {command name: responder} of the L{batch_responder}s of this class and its bases.
    batch_responders = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        table = dict(cls.batch_responders)
        for value in vars(cls).values():
            name = getattr(value, "batch_command", None)
            if name is not None:
                table[name] = value
        cls.batch_responders = table

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._batches = []
        self._batch_size = 0
        self._flush_call = None

    #: A set shared by the connections of one process: those with items
    #: queued, flushed at the end of any read (see
    #: L{dispycos.protocol.base.DispycosAMP.dataReceived}).
    flush_group = None

    def queue(self, command, number, blob):
        """
        @raise PayloadTooLarge: when C{blob} alone exceeds the inline cap.

        Queue C{(number, blob)} for the one-way batch C{command} (a command
        whose one argument is C{batch}: see L{batch_responder}). What is
        queued goes out on the next reactor turn (or at once when large), in
        the order queued: consecutive items of one command share a box.
        """
        if len(blob) + 12 > config.MaxInlineBytes:
            raise PayloadTooLarge("a message of %d bytes exceeds the inline cap of %d bytes"
                                  % (len(blob), config.MaxInlineBytes))
        self._batches.append((command, number, blob))
        self._schedule_flush(len(blob) + 12)

    def queue_call(self, command, **kw):
        """Queue the one-way C{command} with arguments C{kw}, in order with L{queue}d items."""
        self._batches.append((command, None, kw))
        self._schedule_flush(1024)

    def _schedule_flush(self, size):
        self._batch_size += size
        if self._batch_size >= BATCH_BYTES:
            self.flush()
            return
        group = self.flush_group
        if group is not None and group.flushing:
            group.add(self)  # what is reading (or running tasks) flushes the group when it is done
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)
            if group is not None:
                group.add(self)

    def flush(self):
        """Send everything queued now, in order."""
        if self.flush_group is not None:
            self.flush_group.discard(self)
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._batches:
            return
        queued, self._batches, self._batch_size = self._batches, [], 0
        if not self.connected:
            return
        # Consecutive items of one command go in one box, split so one box
        # stays well inside the inline cap.
        command, chunk, size = None, [], 0
        for cmd, number, blob in queued:
            if number is None:  # a one-way call of its own
                if chunk:
                    self._send_batch(command, pack_items(chunk))
                    chunk, size = [], 0
                amp.AMP.callRemote(self, cmd, **blob)
                continue
            n = len(blob) + 12
            if chunk and (cmd is not command or size + n > BATCH_BOX):
                self._send_batch(command, pack_items(chunk))
                chunk, size = [], 0
            command = cmd
            chunk.append((number, blob))
            size += n
        if chunk:
            self._send_batch(command, pack_items(chunk))

    def _send_batch(self, command, data):
        """Send the one-way batch C{command}: a box made here when C{data} fits one AMP value."""
        if len(data) <= _AMP_VALUE:
            self.write_box(batch_box(command, data))
        else:  # split over keys by its argument (BigBytes)
            amp.AMP.callRemote(self, command, batch=data)

    def cancel_flush(self):
        """The connection is gone: no flush is coming (what is queued stays until L{flush} drops it)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
