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
"""

import importlib
import importlib.util
import sys


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
