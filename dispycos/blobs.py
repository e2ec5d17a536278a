# -*- test-case-name: tests.unit.test_serialize_oob,tests.unit.test_serialize_bytes -*-
"""
The blob format with out-of-band buffers (pickle protocol 5, PEP 574), and
its reading side: L{MAGIC}, a header of the buffers' lengths and kinds,
the buffers, then the pickle. L{dispycos.serialize} writes it; L{load}
reads it (or a plain pickle), and L{BufferAssembler} fills a blob's
buffers as its pieces arrive. Nothing here runs before a peer
authenticated: these are called on what an authenticated peer sent.
"""

import io
import pickle
import struct

from dispycos._cpython import new_bytes

#: The start of a blob with out-of-band buffers (a protocol 5 pickle starts with C{\\x80\\x05}).
MAGIC = b"DOB1"
#: Magic, number of buffers, length of the pickle.
_HEAD = struct.Struct("!4sIQ")
#: Per buffer: its length, and its kind: 0 writable, 1 read-only (a pickle
#: buffer each), or L{BYTES} (a C{bytes} value the pickle names by persistent id).
_ENTRY = struct.Struct("!QB")
BYTES = 2
#: The most buffers a blob may claim (its header is then 9 MiB).
MAX_BUFFERS = 1 << 20


class BlobError(pickle.UnpicklingError):
    """A blob with out-of-band buffers is malformed (truncated, or its lengths do not add up)."""




def header(entries, pickled):
    """The header of a blob: C{entries} C{(length, kind)} of its buffers, C{pickled} the pickle's length."""
    return b"".join([_HEAD.pack(MAGIC, len(entries), pickled)] + [_ENTRY.pack(n, kind) for n, kind in entries])


def _entries(head, count):
    """The C{(length, read-only)} of C{count} buffers from the bytes C{head}."""
    entries = list(_ENTRY.iter_unpack(head))
    if len(entries) != count or any(flag > BYTES for _, flag in entries):
        raise BlobError("malformed out-of-band blob: bad buffer entries")
    return entries


def _check_count(count, available):
    if count > MAX_BUFFERS or (available is not None and count * _ENTRY.size > available):
        raise BlobError("malformed out-of-band blob: %d buffers claimed" % (count,))


def _loads_bytes(data):
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise BlobError("malformed out-of-band blob: truncated header")
    _, count, pickled = _HEAD.unpack_from(view)
    at = _HEAD.size
    _check_count(count, len(view) - at)
    entries = _entries(view[at : at + count * _ENTRY.size], count)
    at += count * _ENTRY.size
    if at + sum(n for n, _ in entries) + pickled != len(view):
        raise BlobError("malformed out-of-band blob: its lengths do not add up to its %d bytes" % (len(view),))
    writable = not view.readonly
    buffers = []
    for n, kind in entries:
        piece = view[at : at + n]
        at += n
        # Views of the blob, not copies; but a buffer that was writable is
        # writable again (a copy) when the blob is not (bytes).
        buffers.append(piece if kind or writable else bytearray(piece))
    return _unpickle(view[at:], entries, buffers)


class _Unpickler(pickle.Unpickler):
    """An unpickler whose persistent ids are the blob's C{bytes} values, in order."""

    def __init__(self, file, values, **kw):
        super().__init__(file, **kw)
        self._values = values

    def persistent_load(self, pid):
        if type(pid) is not int or not 0 <= pid < len(self._values):
            raise BlobError("malformed out-of-band blob: no bytes value %r" % (pid,))
        return self._values[pid]


def _unpickle(pickled, entries, buffers):
    """
    Unpickle C{pickled} (bytes-like, or a file) with the blob's buffers:
    the pickle buffers in order, the C{bytes} values by persistent id.
    """
    values = [b if type(b) is bytes else bytes(b) for (_, kind), b in zip(entries, buffers) if kind == BYTES]
    if values:
        buffers = [b for (_, kind), b in zip(entries, buffers) if kind != BYTES]
    if hasattr(pickled, "read"):
        return _Unpickler(pickled, values, buffers=buffers).load() if values else pickle.load(pickled, buffers=buffers)
    if values:
        return _Unpickler(io.BytesIO(pickled), values, buffers=buffers).load()
    return pickle.loads(pickled, buffers=buffers)


def _new_buffer(n, kind):
    """C{(buffer, writable view)} for a buffer of C{n} bytes of C{kind}: a C{bytes} value's is a new bytes."""
    if kind == BYTES:
        return new_bytes(n)
    buffer = bytearray(n)
    return buffer, memoryview(buffer)


class BufferAssembler:
    """
    The out-of-band buffers of a blob that arrives in pieces, filled as
    they arrive: once its header is in (and adds up to the blob's C{size}),
    each buffer is allocated - a C{bytes} value's as a new bytes object
    (L{new_bytes}), the value itself once full - and the pieces are copied
    into it at once, so that only the pickle waits in pieces. L{feed}
    returns what belongs to the pickle. A blob without buffers, or whose
    header does not add up, passes through whole (L{loads} then reads or
    refuses it as ever).

    @ivar complete: True once every buffer is full (L{entries}, L{buffers}).
    """

    def __init__(self, size):
        self.size = size
        self.entries = None
        self.buffers = []
        self.complete = False
        self._head = b""
        self._passing = False
        self._views = []
        self._i = 0
        self._at = 0

    def feed(self, piece):
        """Take the next piece of the blob; the part of it that belongs to the pickle (maybe empty)."""
        if self._passing or self.complete:
            return piece
        if self.entries is None:
            head = self._head + piece
            need = self._parse(head)
            if need:  # not all of the header yet
                self._head = head
                return b""
            if self.entries is None:  # no buffers, or a header that does not add up: all of it passes
                self._passing = True
                self._head = b""
                return head
            used = _HEAD.size + len(self.entries) * _ENTRY.size
            self._head = b""
            piece = memoryview(head)[used:]
        view = memoryview(piece).cast("B")
        while view and not self.complete:
            dest = self._views[self._i]
            take = min(len(dest) - self._at, len(view))
            dest[self._at : self._at + take] = view[:take]
            self._at += take
            view = view[take:]
            if self._at == len(dest):
                self._next()
        return bytes(view) if view else b""

    def _next(self):
        """The current buffer is full: on to the next one that is not."""
        self._views[self._i].release()
        self._i += 1
        self._at = 0
        self._skip_empty()

    def _skip_empty(self):
        while self._i < len(self._views) and not len(self._views[self._i]):
            self._views[self._i].release()
            self._i += 1
        self.complete = self._i >= len(self._views)
        if self.complete:
            self._views = []

    def _parse(self, head):
        """Bytes still needed for the header (0 once decided: L{entries} set, or not an out-of-band blob)."""
        if self.size < _HEAD.size:
            return 0
        if len(head) < _HEAD.size:
            return _HEAD.size - len(head) if MAGIC.startswith(bytes(head[: len(MAGIC)])) else 0
        magic, count, pickled = _HEAD.unpack_from(head)
        if magic != MAGIC or count > MAX_BUFFERS or _HEAD.size + count * _ENTRY.size > self.size:
            return 0
        end = _HEAD.size + count * _ENTRY.size
        if len(head) < end:
            return end - len(head)
        entries = list(_ENTRY.iter_unpack(memoryview(head)[_HEAD.size : end]))
        if (not entries or any(kind > BYTES for _, kind in entries)
                or end + sum(n for n, _ in entries) + pickled != self.size):
            return 0
        self.entries = entries
        for n, kind in entries:
            value, view = _new_buffer(n, kind)
            self.buffers.append(value)
            self._views.append(view)
        self._skip_empty()
        return 0


def _read(f, n):
    data = f.read(n)
    if len(data) != n:
        raise BlobError("malformed out-of-band blob: truncated")
    return data


def _remaining(f):
    """How many bytes are left to read from C{f}, or None when that cannot be told."""
    left = getattr(f, "remaining", None)
    if left is not None:
        return left
    try:
        if f.seekable():
            at = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(at)
            return end - at
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _read_buffer(f, n, known, kind=0):
    """
    The next C{n} bytes of C{f} read into a new bytearray (in place when
    C{f}'s size is C{known}; a C{bytes} value's into a new bytes).
    """
    if known:
        buffer, view = _new_buffer(n, kind)
        got = 0
        while got < n:
            k = f.readinto(view[got:])
            if not k:
                raise BlobError("malformed out-of-band blob: truncated buffer")
            got += k
        return buffer
    # Not allocated up front: no more than what is really there.
    buffer = bytearray()
    while len(buffer) < n:
        block = f.read(min(n - len(buffer), 1 << 24))
        if not block:
            raise BlobError("malformed out-of-band blob: truncated buffer")
        buffer += block
    return buffer


def _starts_with_magic(f):
    """
    Whether file C{f} starts with L{MAGIC}, C{f} left where it was; None
    when that cannot be told without consuming it (no C{peek}, no C{seek}).
    """
    peek = getattr(f, "peek", None)
    if peek is not None:
        head = peek(len(MAGIC))[: len(MAGIC)]
        if len(head) == len(MAGIC) or not head:
            return head == MAGIC
    seekable = getattr(f, "seekable", None)
    if seekable is not None and seekable():
        at = f.tell()
        head = f.read(len(MAGIC))
        f.seek(at)
        return head == MAGIC
    return None


def _load_file(f):
    assembled = getattr(f, "assembled", None)
    if assembled is not None and assembled.complete:
        # Its buffers were filled as it arrived; what f holds is the pickle.
        return _unpickle(f, assembled.entries, assembled.buffers)
    magic = _starts_with_magic(f)
    if magic is None:  # a plain stream: read whole
        return load(f.read())
    if not magic:
        return pickle.load(f)
    _, count, pickled = _HEAD.unpack(_read(f, _HEAD.size))
    left = _remaining(f)
    _check_count(count, left)
    entries = _entries(_read(f, count * _ENTRY.size), count)
    if left is not None and count * _ENTRY.size + sum(n for n, _ in entries) + pickled != left:
        raise BlobError("malformed out-of-band blob: its lengths do not add up to its %d bytes" % (left,))
    buffers = [_read_buffer(f, n, left is not None, kind) for n, kind in entries]
    return _unpickle(f, entries, buffers)


def load(data):
    """What L{dispycos.serialize.loads} does: C{data} is bytes or a file (see there)."""
    if hasattr(data, "readinto"):
        return _load_file(data)
    if data[:4] == MAGIC:
        return _loads_bytes(data)
    return pickle.loads(data)
