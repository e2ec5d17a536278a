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


def write_now(transport):
    """Write what C{transport} buffered to its socket now, when it is a plain, open TCP connection."""
    if not (interfaces.IWriteDescriptor.providedBy(transport) and interfaces.ITCPTransport.providedBy(transport)):
        return
    if not getattr(transport, "connected", False) or getattr(transport, "disconnecting", True):
        return
    if not getattr(transport, "_tempDataLen", 1) and len(getattr(transport, "dataBuffer", b"x")) <= getattr(
            transport, "offset", 0):
        return  # nothing buffered
    transport.doWrite()
