# -*- test-case-name: tests.test_protocol -*-
"""
Writing what a connection has queued to its socket now, instead of on the
reactor's next turn.

A server about to run task code (which may hold the reactor for seconds)
first hands the outcomes and messages it queued to the kernel, so that no
task's code delays what other tasks sent. C{IWriteDescriptor.doWrite} is
public interface; whether anything is buffered is read from Twisted's
C{FileDescriptor} (when it has no such attribute, the write is simply
attempted). A transport that is not a plain TCP connection (TLS, pipes) is
left to the reactor.
"""

from twisted.internet import interfaces
from twisted.protocols import amp


def write_now(transport):
    """Write what C{transport} buffered to its socket now, when it is (or TLS runs over) an open TCP connection."""
    if interfaces.ISSLTransport.providedBy(transport):
        transport = getattr(transport, "transport", None)  # TLS writes its records to the TCP connection at once
    if not (interfaces.IWriteDescriptor.providedBy(transport) and interfaces.ITCPTransport.providedBy(transport)):
        return
    if not getattr(transport, "connected", False) or getattr(transport, "disconnecting", True):
        return
    if not getattr(transport, "_tempDataLen", 1) and len(getattr(transport, "dataBuffer", b"x")) <= getattr(
            transport, "offset", 0):
        return  # nothing buffered
    transport.doWrite()


# -- raw frames inside an AMP connection -------------------------------------------
#
# A stream's bytes follow a StreamData box on the wire as they are, outside
# AMP's framing (no 64 KiB values to cut and join, no box per chunk). The
# box's responder runs while AMP's parser works through a read: it stops
# the parser there, and the bytes it had not parsed yet (the start of the
# frame, maybe more) are taken from it. Both reach into Twisted's
# Int16StringReceiver (C{paused}, C{_unprocessed}); tests/test_protocol.py
# checks that they still mean what they meant.


def stop_parsing(proto):
    """Make AMP's parser stop after the box it is handling (the rest stays unparsed)."""
    proto.paused = True


def take_unparsed(proto):
    """The bytes AMP's parser received but did not parse; it parses again from the next read."""
    rest = proto._unprocessed
    proto._unprocessed = b""
    proto.paused = False
    return rest


# -- AMP argument names ---------------------------------------------------------------
#
# An argument's wire name (bytes) as the Python keyword AMP gives responders;
# custom Argument types that read several boxes' keys need the same mapping.
# tests/test_protocol.py checks it still maps as AMP itself does.

#: C{b"some-name"} -> C{"some_name"} (Twisted's own mapping).
wire_name_to_identifier = amp._wireNameToPythonIdentifier
