# -*- test-case-name: tests.unit.test_tasks -*-
"""
Pickling of code and data that travel between processes.

Everything here is called explicitly, after a peer authenticated; nothing in
the protocol layer ever unpickles.

Large buffers (a numpy array's data: a C{PickleBuffer} of L{OOB_THRESHOLD}
bytes or more) travel out-of-band (pickle protocol 5, PEP 574): the blob is
then L{MAGIC}, a header of the buffers' lengths, the buffers, and the pickle;
without such buffers it is the plain pickle, as ever. L{loads} rebuilds the
values on the buffers as they were read, without copying them again.

A large C{bytes} value (L{BYTES_OOB} or more) travels the same way, as a
buffer the pickle names by a persistent id: the receiving end
(L{BufferAssembler}) reads it straight into a new C{bytes} object as the
blob arrives, which then is the value - no copy into place when it is
unpickled, and no pieces kept until then.
"""

import io
import os
import pickle
import struct
import sys
import sysconfig
import types

import cloudpickle

from dispycos._cpython import new_bytes
from dispycos.errors import PicklingError

# Directories whose modules a remote process can import by itself.
_installed_roots = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if p
)
_dispycos_root = os.path.dirname(os.path.realpath(__file__))


def _is_user_module(module):
    """
    True for a module that lives outside the installed packages: its code must
    travel by value because the remote process cannot import it.
    """
    if module is None or module.__name__ in ("__main__", "builtins"):
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.realpath(path)
    if path.startswith(_dispycos_root + os.sep):
        return False
    return not any(path.startswith(root + os.sep) for root in _installed_roots)


#: Modules already looked at by L{register_by_value}: name -> registered (bool).
_seen_modules = {"builtins": False}


def register_by_value(obj):
    """
    Make cloudpickle ship the module of C{obj} by value when it is the client's
    own code (not an installed package). Returns the module registered, or None.
    """
    if isinstance(obj, types.ModuleType):
        module = obj
    else:
        name = getattr(obj, "__module__", None) or ""
        seen = _seen_modules.get(name)
        if seen is not None:  # looked at before: no file system look-up again
            return sys.modules.get(name) if seen else None
        module = sys.modules.get(name)
    if module is None:
        return None
    if _is_user_module(module):
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            _seen_modules[module.__name__] = False
            return None
        _seen_modules[module.__name__] = True
        return module
    _seen_modules[module.__name__] = False
    return None


#: Types whose values pickle the same with any pickler (no module to ship).
_SCALARS = frozenset((int, float, str, bool, type(None), complex))


def register_types_of(values):
    """L{register_by_value} for the type of each of C{values}, each distinct type once."""
    seen = set()
    for value in values:
        t = type(value)
        if t not in seen:
            seen.add(t)
            if t not in _SCALARS:
                register_by_value(t)


#: Buffers of this many bytes or more travel out-of-band; smaller ones stay in the pickle.
OOB_THRESHOLD = 64 * 1024
#: The start of a blob with out-of-band buffers (a protocol 5 pickle starts with C{\\x80\\x05}).
MAGIC = b"DOB1"
#: Magic, number of buffers, length of the pickle.
_HEAD = struct.Struct("!4sIQ")
#: Per buffer: its length, and its kind: 0 writable, 1 read-only (a pickle
#: buffer each), or L{_BYTES} (a C{bytes} value the pickle names by persistent id).
_ENTRY = struct.Struct("!QB")
_BYTES = 2
#: C{bytes} values of this many bytes or more travel out-of-band (smaller
#: ones cost less to copy than to look for: see L{_pickle}).
BYTES_OOB = 1 << 20
#: The most buffers a blob may claim (its header is then 9 MiB).
MAX_BUFFERS = 1 << 20


class BlobError(pickle.UnpicklingError):
    """A blob with out-of-band buffers is malformed (truncated, or its lengths do not add up)."""


class _Parts:
    """
    A file the pickler writes to that keeps what it is given. The C pickler
    hands a large C{bytes} value (64 KiB or more) to C{write} as the object
    itself, so it is kept by reference rather than copied; anything mutable
    is copied, as the parts may be sent after the pickler returns.
    """

    def __init__(self):
        self.parts = []

    def write(self, data):
        # Besides bytes: a bytearray, or a PickleBuffer (numpy arrays), which has no len().
        part = data if type(data) is bytes else bytes(data)
        self.parts.append(part)
        return len(part)


class _BytesByReference(cloudpickle.Pickler):
    """A pickler that names the C{bytes} objects of C{ids} by persistent id (their order in C{found})."""

    def __init__(self, file, ids, **kw):
        super().__init__(file, **kw)
        self._ids = ids
        self._index = {}
        self.found = []

    def persistent_id(self, obj):
        # Called for every object, before the memo: a value met twice is one buffer.
        if type(obj) is bytes and id(obj) in self._ids:
            index = self._index.get(id(obj))
            if index is None:
                index = self._index[id(obj)] = len(self.found)
                self.found.append(obj)
            return index
        return None


def _plain(obj, depth=3):
    """
    True for data the standard pickler pickles as cloudpickle would: exact
    scalars, small bytes, and small tuples, lists and str-keyed dicts of them
    (C{depth} levels): a task's C{(function, args, kwargs)} of such values,
    an outcome. For those, making a cloudpickle pickler costs more than the
    pickling.
    """
    t = type(obj)
    if t in _SCALARS:
        return True
    if t is tuple or t is list:
        if depth <= 0 or len(obj) > 16:
            return False
        for x in obj:
            if type(x) not in _SCALARS and not _plain(x, depth - 1):
                return False
        return True
    if t is dict:
        if depth <= 0 or len(obj) > 16:
            return False
        for k, v in obj.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _plain(v, depth - 1)):
                return False
        return True
    if t is bytes:
        return len(obj) < OOB_THRESHOLD
    return False


def _pickle(obj, what, copy):
    """The parts of C{obj}'s blob; out-of-band buffers as views of their data unless C{copy}."""
    if _plain(obj):
        return [pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)]
    buffers = []

    def out_of_band(buffer):
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in the pickle
            return True
        if raw.nbytes < OOB_THRESHOLD:
            return True
        readonly = raw.readonly
        if type(raw.obj) is bytes and len(raw.obj) == raw.nbytes:
            raw = raw.obj
        elif copy:
            raw = raw.tobytes()
        buffers.append((raw, readonly))
        return False

    out = _Parts()
    try:
        cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=out_of_band).dump(obj)
        # The C pickler hands a large bytes value to write() as the object
        # itself: its identity tells which values of obj are that large
        # (frames are new objects, and never reach BYTES_OOB). Only then is
        # it pickled again, naming those by persistent id: a Python call per
        # object is nothing beside megabytes, and the rest pays nothing.
        large = {id(p) for p in out.parts if type(p) is bytes and len(p) >= BYTES_OOB}
        if large:
            buffers.clear()
            out = _Parts()
            pickler = _BytesByReference(out, large, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=out_of_band)
            pickler.dump(obj)
            buffers.extend((value, _BYTES) for value in pickler.found)
    except Exception as e:
        raise PicklingError("cannot pickle %s: %s: %s" % (what, type(e).__name__, e)) from e
    if not buffers:
        return out.parts
    head = [_HEAD.pack(MAGIC, len(buffers), sum(map(len, out.parts)))]
    head.extend(_ENTRY.pack(len(data), kind) for data, kind in buffers)
    return [b"".join(head)] + [data for data, _ in buffers] + out.parts


def dumps_parts(obj, what="object"):
    """
    Pickle C{obj} with cloudpickle into a list of C{bytes} whose
    concatenation is the blob; large C{bytes} values in C{obj} are parts of
    their own, not copies. Large buffers (L{OOB_THRESHOLD}) go out-of-band,
    each a part of its own (copied once, as the parts may be sent later;
    not copied when it is a whole C{bytes} object), behind a header.

    @raise PicklingError: naming C{what} when C{obj} cannot be pickled.
    """
    return _pickle(obj, what, copy=True)


def dumps(obj, what="object"):
    """
    Pickle C{obj} with cloudpickle into one blob (L{dumps_parts} joined; an
    out-of-band buffer is copied once, by the join).

    @raise PicklingError: naming C{what} when C{obj} cannot be pickled.
    """
    return b"".join(_pickle(obj, what, copy=False))


def _entries(head, count):
    """The C{(length, read-only)} of C{count} buffers from the bytes C{head}."""
    entries = list(_ENTRY.iter_unpack(head))
    if len(entries) != count or any(flag > _BYTES for _, flag in entries):
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
    values = [b if type(b) is bytes else bytes(b) for (_, kind), b in zip(entries, buffers) if kind == _BYTES]
    if values:
        buffers = [b for (_, kind), b in zip(entries, buffers) if kind != _BYTES]
    if hasattr(pickled, "read"):
        return _Unpickler(pickled, values, buffers=buffers).load() if values else pickle.load(pickled, buffers=buffers)
    if values:
        return _Unpickler(io.BytesIO(pickled), values, buffers=buffers).load()
    return pickle.loads(pickled, buffers=buffers)


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
        if (not entries or any(kind > _BYTES for _, kind in entries)
                or end + sum(n for n, _ in entries) + pickled != self.size):
            return 0
        self.entries = entries
        for n, kind in entries:
            if kind == _BYTES:
                value, view = new_bytes(n)
            else:
                value = bytearray(n)
                view = memoryview(value)
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
        if kind == _BYTES:
            buffer, view = new_bytes(n)
        else:
            buffer = bytearray(n)
            view = memoryview(buffer)
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
        return loads(f.read())
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


def loads(data):
    """
    Unpickle C{data} (bytes, or a file such as a gathered blob); only ever
    called on data from an authenticated peer. Out-of-band buffers of a
    file are read into bytearrays of their own, which the values (numpy
    arrays) are rebuilt on; those of bytes are views of them.

    @raise BlobError: for a malformed blob with out-of-band buffers.
    """
    if hasattr(data, "readinto"):
        return _load_file(data)
    if data[:4] == MAGIC:
        return _loads_bytes(data)
    return pickle.loads(data)
