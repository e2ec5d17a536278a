"""
Lean start for node and server processes: import Twisted without pyOpenSSL.

Twisted's reactor, AMP and endpoints modules try to import pyOpenSSL (and with
it cryptography) when they are first imported, which costs ~12 MiB of resident
memory and ~40 ms per process, and Twisted's compatibility module imports
C{http.cookiejar} (urllib.request, http.client, email: ~3 MiB more). A node
never needs Twisted's own TLS plumbing (L{dispycos.protocol.tls} wraps connections
itself), and most tasks never do either, so node and server processes import
Twisted with pyOpenSSL hidden, then unhide it: code that imports C{OpenSSL}
later gets the real module. What stays off in such a process is the TLS
support Twisted decides on at import time: C{reactor.listenSSL}/C{connectSSL},
C{startTLS} on TCP connections, and TLS endpoints (C{wrapClientTLS}, https
with C{twisted.web.client.Agent}). Tasks that need those run on a node started
with C{--twisted_tls}.

Twisted's L{twisted.internet.defer} imports C{asyncio} for three names
(C{iscoroutine}, and C{Future} and C{AbstractEventLoop} for annotations),
and C{asyncio} brings C{ssl}, C{concurrent.futures} and the rest of its
event loop: ~2.7 MiB of resident memory and 30-50 ms in every node and
server process, which never run an asyncio loop. L{defer_asyncio} lets
C{defer} import those names from a stand-in instead: C{iscoroutine} is the
same test as C{asyncio}'s, the two classes are placeholders that become the
real ones on first use (C{isinstance}, subscripts, attributes, calls), and
any other name Twisted would ask for loads the real C{asyncio}. A task that
imports C{asyncio} gets the real module, and L{Deferred.fromFuture} and
L{Deferred.asFuture} work with it as usual. tests/unit/test_lean.py checks
what Twisted's C{defer} imports from C{asyncio}, so a release that needs
more fails there.
"""

import collections.abc
import importlib
import importlib.util
import sys
import types


def _lazy_module(name):
    """
    Put a lazily loaded C{name} in C{sys.modules} (and on its package): its
    code runs on first attribute access, so importing it costs nothing.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    setattr(importlib.import_module(parent), child, module)


def defer_cookiejar():
    """
    Make C{http.cookiejar} (which Twisted's compatibility module imports, and
    with it urllib.request, http.client and email) load on first use instead
    of now. Call it before anything imports Twisted; nothing once it is loaded.
    """
    if "http.cookiejar" not in sys.modules:
        _lazy_module("http.cookiejar")


#: What C{asyncio.iscoroutine} accepts on this Python (generators too before 3.12).
_COROUTINE_TYPES = (types.CoroutineType, collections.abc.Coroutine) + (
    (types.GeneratorType,) if sys.version_info < (3, 12) else ())


def iscoroutine(obj):
    """Whether C{asyncio.iscoroutine(obj)} (the same test, without importing C{asyncio})."""
    return isinstance(obj, _COROUTINE_TYPES)


class _AsyncioName(type):
    """
    The metaclass of a placeholder for one of C{asyncio}'s classes: whatever
    is done with the placeholder is done with the real class, imported then.
    """

    def real(cls):
        return getattr(importlib.import_module("asyncio"), cls.__name__)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls.real())

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls.real())

    def __getitem__(cls, item):
        return cls.real()[item]

    def __getattr__(cls, name):
        return getattr(cls.real(), name)

    def __call__(cls, *args, **kwargs):
        return cls.real()(*args, **kwargs)


class _AsyncioStandIn(types.ModuleType):
    """
    C{sys.modules["asyncio"]} while L{twisted.internet.defer} is imported:
    the names it takes (L{iscoroutine}, placeholders of C{Future} and
    C{AbstractEventLoop}); any other name is the real C{asyncio}'s.
    """

    def __init__(self):
        super().__init__("asyncio", "dispycos._lean's stand-in, while Twisted is imported")
        self.iscoroutine = iscoroutine
        self.Future = _AsyncioName("Future", (), {"__module__": "asyncio"})
        self.AbstractEventLoop = _AsyncioName("AbstractEventLoop", (), {"__module__": "asyncio"})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get("asyncio") is self:
            del sys.modules["asyncio"]
        return getattr(importlib.import_module("asyncio"), name)


def defer_asyncio():
    """
    Import L{twisted.internet.defer} without C{asyncio} (see the module's
    docstring). Call it before anything imports Twisted's C{defer}; nothing
    once it (or C{asyncio}) is loaded.
    """
    if "twisted.internet.defer" in sys.modules or "asyncio" in sys.modules:
        return
    stand_in = sys.modules["asyncio"] = _AsyncioStandIn()
    try:
        import twisted.internet.defer  # noqa: F401
    finally:
        if sys.modules.get("asyncio") is stand_in:
            del sys.modules["asyncio"]


def import_twisted(twisted_tls=False, install=True):
    """
    Import the reactor (without C{install}: only its module, so that a zygote
    can fork processes that each install their own) and AMP, without pyOpenSSL unless
    C{twisted_tls} (or unless Twisted's networking is already imported, when
    hiding it would change nothing). Call it before anything imports Twisted's
    networking modules.
    """
    if twisted_tls or "twisted.internet.tcp" in sys.modules or "OpenSSL" in sys.modules:
        return
    defer_cookiejar()
    defer_asyncio()
    sys.modules["OpenSSL"] = None  # "import OpenSSL" raises ImportError
    try:
        if install:
            import twisted.internet.reactor  # noqa: F401
        else:
            import twisted.internet.default  # noqa: F401
            import twisted.internet.epollreactor  # noqa: F401
            import twisted.internet.tcp  # noqa: F401
        import twisted.protocols.amp  # noqa: F401
    finally:
        del sys.modules["OpenSSL"]


#: What a task that needs Twisted's own TLS is told in a lean process.
NO_TWISTED_TLS = ("Twisted's TLS support is off in dispycos node and server processes (they start without "
                  "pyOpenSSL, see dispycos._lean): start the node with --twisted_tls")


def refuse_reactor_tls():
    """
    Make the installed reactor's C{listenSSL}/C{connectSSL} fail with
    L{NO_TWISTED_TLS} (instead of Twisted's bare C{"SSL support is not
    present"}) when Twisted decided at import time that it has no TLS. A
    server process (spawned or forked) calls it once its reactor is
    installed; the node runs no task code and needs none of it.
    """
    from twisted.internet import posixbase, reactor

    if getattr(posixbase, "tls", None) is not None or getattr(posixbase, "ssl", None) is not None:
        return  # pyOpenSSL was there after all

    def refuse(*args, **kwargs):
        raise RuntimeError(NO_TWISTED_TLS)

    reactor.listenSSL = reactor.connectSSL = refuse
