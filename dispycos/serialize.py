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
"""

import io
import os
import pickle
import struct
import sys
import sysconfig
import types

import cloudpickle

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


#: Buffers of this many bytes or more travel out-of-band; smaller ones stay in the pickle.
OOB_THRESHOLD = 64 * 1024
#: The start of a blob with out-of-band buffers (a protocol 5 pickle starts with C{\\x80\\x05}).
MAGIC = b"DOB1"
#: Magic, number of buffers, length of the pickle.
_HEAD = struct.Struct("!4sIQ")
#: Per buffer: its length, and 1 when it is read-only (else 0).
_ENTRY = struct.Struct("!QB")
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


def _pickle(obj, what, copy):
    """The parts of C{obj}'s blob; out-of-band buffers as views of their data unless C{copy}."""
    out = _Parts()
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

    try:
        cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=out_of_band).dump(obj)
    except Exception as e:
        raise PicklingError("cannot pickle %s: %s: %s" % (what, type(e).__name__, e)) from e
    if not buffers:
        return out.parts
    head = [_HEAD.pack(MAGIC, len(buffers), sum(map(len, out.parts)))]
    head.extend(_ENTRY.pack(len(data), readonly) for data, readonly in buffers)
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
    if len(entries) != count or any(flag > 1 for _, flag in entries):
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
    for n, readonly in entries:
        piece = view[at : at + n]
        at += n
        # Views of the blob, not copies; but a buffer that was writable is
        # writable again (a copy) when the blob is not (bytes).
        buffers.append(piece if readonly or writable else bytearray(piece))
    return pickle.loads(view[at:], buffers=buffers)


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


def _read_buffer(f, n, known):
    """The next C{n} bytes of C{f} read into a new bytearray (in place when C{f}'s size is C{known})."""
    if known:
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
    buffers = [_read_buffer(f, n, left is not None) for n, _ in entries]
    return pickle.load(f, buffers=buffers)


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
