# -*- test-case-name: tests.unit.test_tasks -*-
"""
Pickling of code and data that travel between processes.

Everything here is called explicitly, after a peer authenticated; nothing in
the protocol layer ever unpickles.
"""

import os
import pickle
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


def dumps_parts(obj, what="object"):
    """
    Pickle C{obj} with cloudpickle into a list of C{bytes} whose
    concatenation is the pickle; large C{bytes} values in C{obj} are parts of
    their own, not copies.

    @raise PicklingError: naming C{what} when C{obj} cannot be pickled.
    """
    out = _Parts()
    try:
        cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception as e:
        raise PicklingError("cannot pickle %s: %s: %s" % (what, type(e).__name__, e)) from e
    return out.parts


def dumps(obj, what="object"):
    """
    Pickle C{obj} with cloudpickle.

    @raise PicklingError: naming C{what} when C{obj} cannot be pickled.
    """
    return b"".join(dumps_parts(obj, what))


def loads(data):
    """
    Unpickle C{data} (bytes, or a file such as a gathered blob); only ever
    called on data from an authenticated peer.
    """
    if hasattr(data, "readinto"):
        return pickle.load(data)
    return pickle.loads(data)
