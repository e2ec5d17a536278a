# -*- test-case-name: tests.unit.test_serialize_oob -*-
"""
The one use of CPython's C API, in one place: a new C{bytes} object whose
contents are written after it is made.

C{PyBytes_FromStringAndSize(NULL, n)} makes a bytes object of C{n}
uninitialised bytes, and the C API documents that such an object may be
written to until it is shared (C{PyBytes_AsString}). dispycos receives a
large C{bytes} value straight into one (L{dispycos.serialize.BufferAssembler}):
the value is then what arrived, not a copy of it. Where that API is not
available (another Python) a bytearray stands in, and the value is copied
once when it is unpickled, as it would be anyway.
"""

import ctypes
import sys


def _api():
    if sys.implementation.name != "cpython":
        return None
    try:
        make = ctypes.pythonapi.PyBytes_FromStringAndSize
        address = ctypes.pythonapi.PyBytes_AsString
    except AttributeError:
        return None
    make.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    make.restype = ctypes.py_object
    address.argtypes = (ctypes.py_object,)
    address.restype = ctypes.c_void_p
    return make, address


_API = _api()


def new_bytes(n):
    """
    C{(value, view)}: a new C{bytes} of C{n} bytes not written yet, and a
    writable view of its contents, to fill before C{value} is handed to
    anyone; or C{(bytearray, view)} without CPython's C API.
    """
    if _API is None or n <= 0:
        value = bytearray(n)
        return value, memoryview(value)
    make, address = _API
    value = make(None, n)
    view = memoryview((ctypes.c_char * n).from_address(address(value))).cast("B")
    return value, view
