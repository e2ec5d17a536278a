# -*- test-case-name: tests.unit.test_tasks -*-
"""
Pickling of code and data that travel between processes.

Everything here is called explicitly, after a peer authenticated; nothing in
the protocol layer ever unpickles.

Large buffers (a numpy array's data: a C{PickleBuffer} of L{OOB_THRESHOLD}
bytes or more) travel out-of-band (pickle protocol 5, PEP 574): the blob is
then L{MAGIC}, a header of the buffers' lengths, the buffers, and the pickle
(L{dispycos.blobs}); without such buffers it is the plain pickle, as ever.
L{loads} rebuilds the values on the buffers as they were read, without
copying them again.

A large C{bytes} value (L{BYTES_OOB} or more) travels the same way, as a
buffer the pickle names by a persistent id: the receiving end
(L{dispycos.blobs.BufferAssembler}) reads it straight into a new C{bytes} object as the
blob arrives, which then is the value - no copy into place when it is
unpickled, and no pieces kept until then.
"""

import os
import pickle
import sys
import sysconfig
import types

import cloudpickle

from dispycos import blobs
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
#: The blob format's (L{dispycos.blobs}) start, and the error a malformed one raises.
MAGIC, BlobError = blobs.MAGIC, blobs.BlobError
#: C{bytes} values of this many bytes or more travel out-of-band (smaller
#: ones cost less to copy than to look for: see L{_pickle}).
BYTES_OOB = 1 << 20


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
            buffers.extend((value, blobs.BYTES) for value in pickler.found)
    except Exception as e:
        raise PicklingError("cannot pickle %s: %s: %s" % (what, type(e).__name__, e)) from e
    if not buffers:
        return out.parts
    head = blobs.header([(len(data), kind) for data, kind in buffers], sum(map(len, out.parts)))
    return [head] + [data for data, _ in buffers] + out.parts


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


def loads(data):
    """
    Unpickle C{data} (bytes, or a file such as a gathered blob); only ever
    called on data from an authenticated peer. Out-of-band buffers of a
    file are read into bytearrays of their own, which the values (numpy
    arrays) are rebuilt on; those of bytes are views of them (see
    L{dispycos.blobs}).

    @raise BlobError: for a malformed blob with out-of-band buffers.
    """
    return blobs.load(data)
