# -*- test-case-name: tests.test_core -*-
"""Each reactor's L{Runtime} (normally one per process): the one at hand, made on first use for a client."""

import weakref

from dispycos.peer.connection import _reading
from dispycos.peer.runtime import Runtime

#: Each reactor's runtime (a process normally has one reactor, and one runtime).
_runtimes = weakref.WeakKeyDictionary()


def runtime_for(reactor, create=False):
    """C{reactor}'s runtime; with C{create}, one listening on loopback is made when there is none."""
    runtime = _runtimes.get(reactor)
    if runtime is None and create:
        runtime = Runtime(reactor)
        runtime.listen()
        _runtimes[reactor] = runtime
    return runtime


def set_runtime(runtime):
    """Install C{runtime} as its reactor's runtime (a server's, a scheduler's)."""
    _runtimes[runtime.reactor] = runtime


def forget_runtime(runtime):
    """Stop handing out C{runtime} as its reactor's (the next one needed is a new one)."""
    if _runtimes.get(runtime.reactor) is runtime:
        del _runtimes[runtime.reactor]


def current_runtime(create=True):
    """
    The runtime at hand: the one whose connection is being read, else the
    global reactor's (the public API's default; a client process gets one,
    listening on loopback, the first time it is needed).
    """
    runtime = _reading.get()
    if runtime is not None:
        return runtime
    from twisted.internet import reactor  # the public API's default reactor

    return runtime_for(reactor, create)
