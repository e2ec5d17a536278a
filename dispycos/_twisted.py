# -*- test-case-name: tests.unit.test_twisted_internals,tests.unit.test_protocol -*-
"""
Every use of Twisted's private names, in one place.

dispycos reaches under Twisted's public API in a few spots, for speed
(writing queued bytes now rather than on the reactor's next turn) or where
no public hook exists (which options a command line gave, how many bytes a
transport still holds, AMP's argument names). Each helper here falls back to public behaviour when what
it looks for is missing, and tests/unit/test_twisted_internals.py fails
loudly when a Twisted release changes what they rely on. Nothing else in
the package names a private attribute of Twisted.
"""

from twisted.internet import interfaces
from twisted.protocols import amp


# -- writing now ------------------------------------------------------------------------
#
# A server about to run task code (which may hold the reactor for seconds)
# first hands the outcomes and messages it queued to the kernel, so that no
# task's code delays what other tasks sent. C{IWriteDescriptor.doWrite} is
# public interface; whether anything is buffered is read from Twisted's
# C{FileDescriptor} (when it has no such attribute, the write is simply
# attempted). A transport that is not a plain TCP connection (TLS, pipes) is
# left to the reactor.


def _holds_nothing(transport):
    """True when a FileDescriptor has nothing buffered (False when it cannot tell)."""
    return not getattr(transport, "_tempDataLen", 1) and len(getattr(transport, "dataBuffer", b"x")) <= getattr(
        transport, "offset", 0)


def _tcp(transport):
    """Whether C{transport} is a plain TCP connection (a file descriptor Twisted writes for us)."""
    return interfaces.IWriteDescriptor.providedBy(transport) and interfaces.ITCPTransport.providedBy(transport)


def write_now(transport):
    """Write what C{transport} buffered to its socket now, when it is (or TLS runs over) an open TCP connection."""
    if interfaces.ISSLTransport.providedBy(transport):
        transport = getattr(transport, "transport", None)  # TLS writes its records to the TCP connection at once
    if not _tcp(transport):
        return
    if not getattr(transport, "connected", False) or getattr(transport, "disconnecting", True):
        return
    if _holds_nothing(transport):
        return
    transport.doWrite()


#: Writes up to this size go through (see L{install_write_through}).
WRITE_THROUGH = 1 << 16


def install_write_through(transport):
    """
    Make C{transport.write} hand data to the socket at once when the
    connection holds nothing else (what the socket does not take is
    buffered by Twisted as ever), for a plain TCP connection; True when
    installed. Twisted's own C{write} only buffers and registers the socket
    for writing, and its C{doWrite} unregisters it again: two C{epoll_ctl}
    calls and a dozen Python calls on the path of every task and outcome.
    C{writeSomeData} is FileDescriptor's documented hook (it returns what
    was written, or the error that ends the connection).
    """
    if interfaces.ISSLTransport.providedBy(transport) or not _tcp(transport):
        return False
    buffered_write = transport.write

    def write_through(data):
        # (Large writes are left to Twisted, which sends them from where they are.)
        if len(data) <= WRITE_THROUGH and transport.connected and not transport.disconnecting and \
                _holds_nothing(transport):
            n = transport.writeSomeData(data)
            if type(n) is int and n > 0:
                if n >= len(data):
                    return
                data = data[n:]
        buffered_write(data)

    try:
        transport.write = write_through
    except AttributeError:
        return False
    return True


# -- AMP argument names ---------------------------------------------------------------
#
# An argument's wire name (bytes) as the Python keyword AMP gives responders;
# custom Argument types that read several boxes' keys need the same mapping.
# tests/unit/test_twisted_internals.py checks it still maps as AMP itself does.

#: C{b"some-name"} -> C{"some_name"} (Twisted's own mapping).
wire_name_to_identifier = amp._wireNameToPythonIdentifier


# -- bytes a transport holds ------------------------------------------------------------
#
# FileDescriptor keeps what it could not write yet in dataBuffer (from
# offset on) and _tempDataBuffer (_tempDataLen bytes); TLS over TCP keeps its
# records in the TCP transport under it.


def buffered_bytes(transport):
    """Bytes a transport (possibly TLS over TCP) holds for its peer (0 when it does not say)."""
    total = 0
    seen = 0
    while transport is not None and seen < 4:
        seen += 1
        data = getattr(transport, "dataBuffer", None)
        if data is not None:
            total += len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
        transport = getattr(transport, "transport", None)
    return total


# -- options a command line gave --------------------------------------------------------
#
# usage.Options calls the handler of each option it parses from its
# _dispatch table (long name -> callable); wrapping those handlers is the
# only way to learn which options were given rather than defaulted.


def wrap_option_handlers(options, wrap):
    """
    Replace each option handler C{h} of C{options} (a L{usage.Options}, after
    its C{__init__}) by C{wrap(name, h)}; C{name} is the option's long name.
    """
    table = getattr(options, "_dispatch", None)
    if not isinstance(table, dict):
        raise RuntimeError("twisted.python.usage.Options has no _dispatch table: cannot record given options")
    options._dispatch = {name: wrap(name, handler) for name, handler in table.items()}
