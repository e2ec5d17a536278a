"""
Guards of dispycos._twisted, the one module that names Twisted's private
attributes: each test fails loudly when a Twisted release changes what a
helper relies on (tests/unit/test_protocol.py also drives the raw-frame helpers
through a whole connection).
"""

from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols import amp
from twisted.python import usage

from dispycos import _twisted


def test_a_file_descriptor_keeps_what_buffered_bytes_counts():
    fd = abstract.FileDescriptor(reactor=MemoryReactor())
    fd.connected = True
    for name in ("dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer"):
        assert hasattr(fd, name), name
    assert _twisted.buffered_bytes(fd) == 0
    fd.write(b"abc")
    fd.write(b"de")
    assert _twisted.buffered_bytes(fd) == 5
    assert _twisted.buffered_bytes(StringTransport()) == 0  # nothing to read: public fallback


def test_write_now_writes_what_a_tcp_connection_buffered():
    written = []

    class Connection(abstract.FileDescriptor):
        connected, disconnecting = True, False

        def writeSomeData(self, data):
            written.append(bytes(data))
            return len(data)

    from zope.interface import directlyProvides

    from twisted.internet.interfaces import IReadWriteDescriptor, ITCPTransport

    conn = Connection(reactor=MemoryReactor())
    directlyProvides(conn, ITCPTransport, IReadWriteDescriptor)
    _twisted.write_now(conn)  # nothing buffered: nothing written
    assert written == []
    conn.write(b"queued")
    _twisted.write_now(conn)
    assert written == [b"queued"] and _twisted.buffered_bytes(conn) == 0
    _twisted.write_now(StringTransport())  # not a TCP connection: left alone


class _Socket(abstract.FileDescriptor):
    """A TCP connection whose socket takes C{room} bytes per call (records what it took)."""

    connected, disconnecting = True, False

    def __init__(self, room):
        super().__init__(reactor=MemoryReactor())
        from zope.interface import directlyProvides

        from twisted.internet.interfaces import IReadWriteDescriptor, ITCPTransport

        directlyProvides(self, ITCPTransport, IReadWriteDescriptor)
        self.room = room
        self.sent = []

    def writeSomeData(self, data):
        if isinstance(self.room, Exception):
            return self.room
        n = min(self.room, len(data))
        self.sent.append(bytes(data[:n]))
        return n


def test_writes_go_through_to_the_socket_when_nothing_is_buffered():
    from twisted.internet import tcp

    assert callable(getattr(tcp.Connection, "writeSomeData", None))  # the hook write_through uses
    conn = _Socket(room=100)
    assert _twisted.install_write_through(conn)
    conn.write(b"now")
    assert conn.sent == [b"now"] and _twisted.buffered_bytes(conn) == 0
    conn.room = 2
    conn.write(b"abcdef")  # the socket takes 2: the rest waits in Twisted's buffer
    assert conn.sent[-1] == b"ab" and _twisted.buffered_bytes(conn) == 4
    conn.room = 100
    conn.write(b"gh")  # something is buffered: in order, behind it
    assert conn.sent[-1] == b"ab" and _twisted.buffered_bytes(conn) == 6
    conn.doWrite()
    assert b"".join(conn.sent) == b"nowabcdefgh"
    conn.room = ConnectionError("lost")  # writeSomeData's error: Twisted's buffer finds it
    conn.write(b"x")
    assert _twisted.buffered_bytes(conn) == 1


def test_write_through_leaves_other_transports_alone():
    t = StringTransport()
    assert not _twisted.install_write_through(t)
    t.write(b"x")
    assert t.value() == b"x"


def test_wire_names_map_as_amp_maps_them():
    class Probe(amp.Command):
        arguments = [(b"some-name", amp.Integer())]

    assert _twisted.wire_name_to_identifier(b"some-name") == "some_name"
    assert Probe.parseArguments({b"some-name": b"3"}, None) == {"some_name": 3}  # AMP's own, public


def test_wrapped_option_handlers_see_only_the_given_options():
    given = []

    class Options(usage.Options):
        optFlags = [["verbose", "v", ""]]
        optParameters = [["port", "p", 1, "", int], ["host", None, "x", ""]]

        def opt_extra(self, value):
            self["extra"] = value

    options = Options()

    def wrap(name, handler):
        def recorded(opt, value=None):
            given.append(name)
            if isinstance(handler, usage.CoerceParameter):
                return handler.dispatch(opt, value)
            return handler(opt, value) if value is not None else handler(opt)
        return recorded

    _twisted.wrap_option_handlers(options, wrap)
    options.parseOptions(["-p", "7", "--extra", "e"])
    assert sorted(set(given)) == ["extra", "port"]
    assert options["port"] == 7 and options["extra"] == "e" and options["host"] == "x" and not options["verbose"]
