"""
Unit tests of the wire layer: L{dispycos.protocol.arguments} (large values
and batches), L{dispycos.protocol.auth} (the challenge-response proofs) and
L{dispycos.protocol.base.DispycosAMP} (the handshake gate, its deadline and
the batching of one-way messages), over in-memory transports
(L{twisted.test.iosim}) driven by a fake clock: no processes, no sockets.
"""

import hashlib
import hmac
import pickle

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from dispycos import config, serialize
from dispycos.errors import AuthenticationError, ConnectionLostError, PayloadTooLarge
from dispycos.protocol import auth, commands
from dispycos.protocol.admission import PendingConnections
from dispycos.protocol.arguments import BigBytes, pack_items, unpack_items
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.batching import BATCH_BYTES, FlushGroup
from dispycos.peer.connection import PeerAMP
from dispycos.status import Location

# -- helpers ----------------------------------------------------------------------


def watch(d):
    """
    Record C{d}'s result now (AMP reports errors no one handles when the
    answer arrives, so errbacks must be in place before pumping).
    """
    box = []
    d.addBoth(box.append)
    return box


def _box(d):
    if isinstance(d, list):
        return d
    return watch(d)


def result_of(d):
    """The result a Deferred (or a L{watch} list) already has."""
    box = _box(d)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d):
    """The Failure a Deferred (or a L{watch} list) already has."""
    box = _box(d)
    assert box, "Deferred has not fired"
    assert isinstance(box[0], Failure), "Deferred succeeded with %r" % (box[0],)
    return box[0]


# -- BigBytes ----------------------------------------------------------------------


class Blob(amp.Command):
    arguments = [(b"data", BigBytes())]
    response = []


class OptionalBlob(amp.Command):
    arguments = [(b"data", BigBytes(optional=True)), (b"n", amp.Integer())]
    response = []


class SmallCap(amp.Command):
    arguments = [(b"data", BigBytes(cap=1000))]
    response = []


def wire_round_trip(command, **values):
    """Encode C{values} as C{command}'s arguments, serialize the box, parse it back."""
    box = command.makeArguments(values, None)
    wire = box.serialize()
    parsed = amp.parseString(wire)
    assert len(parsed) == 1
    return box, command.parseArguments(parsed[0], None)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200000])
def test_bigbytes_round_trip_through_a_serialized_box(size):
    data = bytes(i % 251 for i in range(size))
    box, parsed = wire_round_trip(Blob, data=data)
    assert parsed == {"data": data}
    assert isinstance(parsed["data"], bytes)
    # Every AMP value stays within AMP's 64 KiB limit.
    assert all(len(v) <= 0xFFFF for v in box.values())


@pytest.mark.parametrize(
    "size, keys",
    [
        (0, [b"data"]),
        (1, [b"data"]),
        (65535, [b"data"]),
        (65536, [b"data", b"data.2"]),
        (200000, [b"data", b"data.2", b"data.3", b"data.4"]),
    ],
)
def test_bigbytes_splits_over_numbered_keys(size, keys):
    data = b"x" * size
    strings = {}
    BigBytes().toBox(b"data", strings, {"data": data}, None)
    assert sorted(strings) == sorted(keys)
    assert len(strings[b"data"]) == min(size, 65535)
    for k in keys[1:-1]:
        assert len(strings[k]) == 65535
    assert b"".join(strings[k] for k in keys) == data


def test_bigbytes_accepts_bytearray_and_memoryview():
    for value in (bytearray(b"abc" * 30000), memoryview(b"xyz" * 30000)):
        _, parsed = wire_round_trip(Blob, data=value)
        assert parsed["data"] == bytes(value)


def test_bigbytes_optional_value_may_be_absent():
    box, parsed = wire_round_trip(OptionalBlob, data=None, n=3)
    assert b"data" not in box
    assert parsed == {"data": None, "n": 3}
    _, parsed = wire_round_trip(OptionalBlob, data=b"z" * 70000, n=4)
    assert parsed == {"data": b"z" * 70000, "n": 4}


def test_bigbytes_required_value_missing_is_an_error():
    with pytest.raises(KeyError):
        Blob.parseArguments(amp.AmpBox(), None)


def test_bigbytes_refuses_to_send_more_than_the_cap():
    wire_round_trip(SmallCap, data=b"a" * 1000)  # exactly the cap is fine
    with pytest.raises(PayloadTooLarge):
        SmallCap.makeArguments({"data": b"a" * 1001}, None)
    with pytest.raises(PayloadTooLarge):
        BigBytes().toBox(b"data", {}, {"data": b"\0" * (config.MaxInlineBytes + 1)}, None)


def test_bigbytes_default_cap_is_the_inline_limit():
    assert BigBytes().cap == config.MaxInlineBytes
    strings = {}
    BigBytes().toBox(b"data", strings, {"data": b"\0" * config.MaxInlineBytes}, None)
    objects = {}
    BigBytes().fromBox(b"data", strings, objects, None)
    assert len(objects["data"]) == config.MaxInlineBytes


def test_bigbytes_refuses_to_receive_far_more_than_the_cap():
    strings = {}
    BigBytes().toBox(b"data", strings, {"data": b"q" * 300000}, None)
    with pytest.raises(PayloadTooLarge):
        BigBytes(cap=1000).fromBox(b"data", strings, {}, None)


def test_bigbytes_refuses_to_receive_just_above_the_cap():
    strings = {}
    BigBytes().toBox(b"data", strings, {"data": b"q" * 131000}, None)  # two pieces
    with pytest.raises(PayloadTooLarge):
        BigBytes(cap=100000).fromBox(b"data", strings, {}, None)


def test_bigbytes_payload_too_large_fails_the_call():
    """AMP encodes the arguments synchronously: the call fails at once, nothing is sent."""
    clock = Clock()
    client, server, pump = iosim.connectedServerAndClient(lambda: amp.AMP(), lambda: Connector(clock), clock=clock)
    d = client.callRemote(SmallCap, data=b"a" * 5000)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(PayloadTooLarge)
    assert not client.transport.getOutBuffer()


def test_json_argument_round_trip():
    class Doc(amp.Command):
        arguments = [(b"doc", commands.JSON()), (b"none", commands.JSON(optional=True))]
        response = []

    doc = {"a": [1, 2, {"b": None}], "text": "\u00e9" * 40000}
    _, parsed = wire_round_trip(Doc, doc=doc, none=None)
    assert parsed == {"doc": doc, "none": None}


# -- pack_items / unpack_items -----------------------------------------------------


def test_pack_items_round_trip():
    items = [(0, b""), (1, b"a"), (2**64 - 1, b"max"), (7, bytes(range(256)) * 300)]
    data = pack_items(items)
    assert isinstance(data, bytes)
    assert unpack_items(data) == items
    assert unpack_items(bytearray(data)) == items
    assert pack_items([]) == b""
    assert unpack_items(b"") == []


def test_pack_items_round_trip_through_bigbytes():
    items = [(i, b"m" * (i * 997)) for i in range(60)]
    _, parsed = wire_round_trip(commands.Messages, batch=pack_items(items))
    assert unpack_items(parsed["batch"]) == items


def test_unpack_items_truncated_raises_value_error():
    data = pack_items([(1, b"hello"), (2, b"world!")])
    first = 12 + 5
    assert unpack_items(data[:first]) == [(1, b"hello")]
    for cut in range(1, len(data)):
        if cut != first:
            with pytest.raises(ValueError):
                unpack_items(data[:cut])


def test_unpack_items_truncated_header_and_item():
    data = pack_items([(1, b"hello")])
    with pytest.raises(ValueError, match="header"):
        unpack_items(data[:7])
    with pytest.raises(ValueError, match="item"):
        unpack_items(data[:-1])
    with pytest.raises(ValueError):
        unpack_items(data + b"\0")


# -- auth ---------------------------------------------------------------------------


def test_key_from_secret():
    """Keys are scrypt of the secret, salted by what they are for (checked against hashlib's scrypt)."""

    def scrypt(secret, use):
        return hashlib.scrypt(secret, salt=b"dispycos-2:" + use, n=2**14, r=8, p=1, dklen=32)

    key = auth.key_from_secret("s3cret")
    assert key == scrypt(b"s3cret", b"node")
    assert len(key) == 32
    assert auth.key_from_secret(b"s3cret") == key == auth.key_from_secret("s3cret", auth.NODE)
    assert auth.key_from_secret("s3cret2") != key
    assert auth.key_from_secret("s3cret", auth.CLIENT) == scrypt(b"s3cret", b"client") != key
    assert auth.key_from_secret("") == auth.key_from_secret(b"") == auth.key_from_secret(None)
    assert auth.key_from_secret("") == scrypt(b"", b"node")
    assert auth.key_from_secret("\u00e9") == scrypt("\u00e9".encode(), b"node")


def test_proofs_are_bound_to_the_context():
    """A proof made for one channel binding, computation or location fails for another."""
    key = auth.key_from_secret("k")
    n1, n2 = b"1" * 32, b"2" * 32
    here = auth.context(1, "c1", "10.0.0.1:1", "10.0.0.2:2", b"tls:" + b"a" * 32)
    for other in (auth.context(1, "c1", "10.0.0.1:1", "10.0.0.2:2", b"tls:" + b"b" * 32),
                  auth.context(1, "c1", "10.0.0.1:1", "10.0.0.2:2", b"plain"),
                  auth.context(2, "c1", "10.0.0.1:1", "10.0.0.2:2", b"tls:" + b"a" * 32),
                  auth.context(1, "c2", "10.0.0.1:1", "10.0.0.2:2", b"tls:" + b"a" * 32),
                  auth.context(1, "c1", "10.0.0.9:1", "10.0.0.2:2", b"tls:" + b"a" * 32),
                  auth.context(1, "c1", "10.0.0.1:1", "10.0.0.9:2", b"tls:" + b"a" * 32)):
        assert auth.listener_proof(key, n1, n2, "peer", here) != auth.listener_proof(key, n1, n2, "peer", other)
        assert auth.connector_proof(key, n1, n2, "peer", here) != auth.connector_proof(key, n1, n2, "peer", other)
    assert auth.listener_proof(key, n1, n2, "peer", here) == auth.listener_proof(key, n1, n2, "peer", here)


def test_new_nonce_is_fresh():
    a, b = auth.new_nonce(), auth.new_nonce()
    assert len(a) == len(b) == auth.NONCE_BYTES
    assert a != b


def test_proofs_differ_by_role_direction_key_and_nonces():
    key = auth.key_from_secret("k")
    n1, n2 = b"1" * 32, b"2" * 32
    lp = auth.listener_proof(key, n1, n2, "peer")
    cp = auth.connector_proof(key, n1, n2, "peer")
    assert len(lp) == len(cp) == 32
    # deterministic
    assert lp == auth.listener_proof(key, n1, n2, "peer")
    # the listener's proof can not be replayed as the connector's (direction)
    assert lp != cp
    assert auth.listener_proof(key, n1, n2, "peer") != auth.connector_proof(key, n2, n1, "peer")
    # role is bound
    assert lp != auth.listener_proof(key, n1, n2, "scheduler")
    assert cp != auth.connector_proof(key, n1, n2, "scheduler")
    # key and nonces are bound (and nonce order matters)
    assert lp != auth.listener_proof(auth.key_from_secret("other"), n1, n2, "peer")
    assert lp != auth.listener_proof(key, n2, n1, "peer")
    assert lp != auth.listener_proof(key, n1, b"3" * 32, "peer")
    # it is HMAC-SHA256 over the documented message
    assert lp == hmac.new(key, b"dispycos-s|" + n1 + b"|" + n2 + b"|peer|", hashlib.sha256).digest()
    assert cp == hmac.new(key, b"dispycos-c|" + n1 + b"|" + n2 + b"|peer|", hashlib.sha256).digest()


def test_check_compares_like_compare_digest():
    p = auth.listener_proof(auth.key_from_secret("k"), b"a" * 32, b"b" * 32, "peer")
    assert auth.check(p, bytes(p)) is True
    assert auth.check(p, p[:-1] + bytes([p[-1] ^ 1])) is False
    assert auth.check(p, p[:-1]) is False
    assert auth.check(p, b"") is False
    assert auth.check(b"", b"") is True
    with pytest.raises(TypeError):
        auth.check(p, "not bytes")


def test_check_is_hmac_compare_digest(monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check(b"x", b"x")
    assert calls == [(b"x", b"x")]


# -- DispycosAMP: handshake and the gate -----------------------------------------------

KEY = auth.key_from_secret("right secret")
WRONG = auth.key_from_secret("wrong secret")
LISTENER_LOC = "127.0.0.1:1000"
CONNECTOR_LOC = "127.0.0.1:2000"


def keyring(role, computation):
    if role == "peer" and computation == "c1":
        return KEY
    return None


class RecordingInteger(amp.Integer):
    """An Integer argument that records every decode (fromBox)."""

    def __init__(self):
        super().__init__()
        self.decoded = []

    def fromBox(self, name, strings, objects, proto):
        self.decoded.append(strings.get(name))
        return super().fromBox(name, strings, objects, proto)


class Probe(amp.Command):
    """A test-only command: its argument records decodes."""

    arguments = [(b"value", RecordingInteger())]
    response = [(b"echo", amp.Integer())]


PROBE_ARG = Probe.arguments[0][1]


@pytest.fixture(autouse=True)
def _reset_probe():
    PROBE_ARG.decoded.clear()
    yield
    PROBE_ARG.decoded.clear()


class Stall(amp.Command):
    """A test-only command that is never answered."""

    arguments = []
    response = []


class Listener(DispycosAMP):
    def __init__(self, clock):
        super().__init__(clock, keyring=keyring, location=LISTENER_LOC)
        self.probes = []
        self.accepted = 0

    def authenticated_as_listener(self):
        self.accepted += 1

    @Probe.responder
    def _probe(self, value):
        self.probes.append(value)
        return {"echo": value}

    @Stall.responder
    def _stall(self):
        from twisted.internet.defer import Deferred

        return Deferred()


class Connector(DispycosAMP):
    def __init__(self, clock):
        super().__init__(clock, location=CONNECTOR_LOC)


def connect(client_class=None):
    """A Listener and a client (default: a Connector) on in-memory transports; a shared clock."""
    clock = Clock()
    make_client = client_class or Connector
    client, server, pump = iosim.connectedServerAndClient(
        lambda: Listener(clock), lambda: make_client(clock), clock=clock
    )
    return clock, client, server, pump


def dropped(proto):
    """The connection of C{proto} is closed."""
    return not proto.connected and proto.lost is None


def test_handshake_succeeds_with_the_right_key():
    clock, client, server, pump = connect()
    assert not client.authenticated and not server.authenticated
    d = client.handshake(KEY, "peer", "c1")
    pump.flush()
    assert result_of(d) is None
    assert client.authenticated and server.authenticated
    assert server.accepted == 1
    assert (server.role, server.computation, server.peer_location) == ("peer", "c1", CONNECTOR_LOC)
    assert (client.role, client.computation, client.peer_location) == ("peer", "c1", LISTENER_LOC)
    # the deadline is cancelled: the connection outlives it
    clock.advance(config.HandshakeTimeout * 3)
    pump.flush()
    assert server.connected and client.connected


@pytest.mark.parametrize("key, ok", [(KEY, True), (WRONG, False)])
def test_handshake_with_a_key_still_being_stretched_waits_for_it_after_hello(key, ok):
    """A connector's key may be a Deferred (auth.StretchedKey.wait): Hello goes out, the proof waits for the key."""
    clock, client, server, pump = connect()
    stretching = defer.Deferred()
    d = client.handshake(stretching, "peer", "c1")
    pump.flush()
    assert server._hello_seen and not d.called  # Hello answered, nothing proved yet
    assert not server.authenticated and client.connected
    stretching.callback(key)
    pump.flush()
    if ok:
        assert result_of(d) is None
        assert client.authenticated and server.authenticated
    else:
        failure_of(d).trap(AuthenticationError)
        assert dropped(client) and not server.authenticated


def test_after_authentication_commands_are_dispatched():
    clock, client, server, pump = connect()
    client.handshake(KEY, "peer", "c1")
    pump.flush()
    d = client.callRemote(Probe, value=42)
    pump.flush()
    assert result_of(d) == {"echo": 42}
    assert PROBE_ARG.decoded == [b"42"]
    assert server.probes == [42]


@pytest.mark.parametrize(
    "key, role, computation",
    [(WRONG, "peer", "c1"), (KEY, "peer", "c2"), (KEY, "scheduler", "c1"), (WRONG, "scheduler", "c2")],
)
def test_handshake_fails_with_a_wrong_key_or_unknown_peer(key, role, computation):
    clock, client, server, pump = connect()
    d = client.handshake(key, role, computation)
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated and not client.authenticated
    assert server.accepted == 0
    assert dropped(server) and dropped(client)


def test_listener_with_another_key_is_not_trusted_by_the_connector():
    """The connector checks the listener's proof: an impostor listener is refused."""
    clock = Clock()

    class Impostor(Listener):
        def __init__(self, clock):
            super().__init__(clock)
            self.keyring = lambda role, comp: WRONG

    client, server, pump = iosim.connectedServerAndClient(lambda: Impostor(clock), lambda: Connector(clock), clock=clock)
    d = client.handshake(KEY, "peer", "c1")
    pump.flush()
    f = failure_of(d)
    f.trap(AuthenticationError)
    assert "prove" in f.getErrorMessage()
    assert not client.authenticated and not server.authenticated
    assert dropped(client)


def test_listener_refuses_a_bad_connector_proof():
    """A raw connector that answers Hello with a bogus proof is refused."""
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    nonce = auth.new_nonce()
    d = raw.callRemote(commands.Hello, version=config.ProtocolVersion, role="peer", computation="c1",
                       location=CONNECTOR_LOC, nonce=nonce)
    pump.flush()
    r = result_of(d)
    bound = auth.context(config.ProtocolVersion, "c1", CONNECTOR_LOC, LISTENER_LOC, b"plain")
    assert auth.check(auth.listener_proof(KEY, nonce, r["nonce"], "peer", bound), r["proof"])
    assert r["location"] == LISTENER_LOC
    # a proof for the right nonces but made in the listener's direction
    d = watch(raw.callRemote(commands.Authenticate, proof=auth.listener_proof(KEY, r["nonce"], nonce, "peer", bound)))
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated and server.accepted == 0
    assert dropped(server)


def test_authenticate_without_hello_is_refused():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    d = watch(raw.callRemote(commands.Authenticate, proof=b"p" * 32))
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated
    assert dropped(server)


def test_hello_with_another_protocol_version_is_refused():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    d = watch(raw.callRemote(commands.Hello, version=config.ProtocolVersion + 1, role="peer", computation="c1",
                             location="", nonce=auth.new_nonce()))
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated and dropped(server)


def test_hello_with_a_short_nonce_is_refused():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    d = watch(raw.callRemote(commands.Hello, version=config.ProtocolVersion, role="peer", computation="c1",
                             location="", nonce=b"short"))
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated and dropped(server)


def test_connector_answers_no_hello():
    """A side without a keyring (a connector) refuses to act as a listener."""
    clock = Clock()
    client, server, pump = iosim.connectedServerAndClient(lambda: Connector(clock), amp.AMP, clock=clock)
    d = watch(client.callRemote(commands.Hello, version=config.ProtocolVersion, role="peer", computation="c1",
                                location="", nonce=auth.new_nonce()))
    pump.flush()
    failure_of(d).trap(AuthenticationError)
    assert not server.authenticated


def test_unauthenticated_command_is_never_decoded_and_drops_the_connection():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    d = watch(raw.callRemote(Probe, value=7))
    pump.flush()
    assert PROBE_ARG.decoded == []
    assert server.probes == []
    assert not server.authenticated
    assert dropped(server)
    failure_of(d).trap(ConnectionDone, ConnectionLost)


def test_unauthenticated_command_after_hello_is_never_decoded():
    """Half a handshake (Hello answered, no Authenticate) does not open the gate."""
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    h = raw.callRemote(commands.Hello, version=config.ProtocolVersion, role="peer", computation="c1",
                       location="", nonce=auth.new_nonce())
    pump.flush()
    result_of(h)
    d = watch(raw.callRemote(Probe, value=8))
    pump.flush()
    assert PROBE_ARG.decoded == [] and server.probes == []
    assert dropped(server)
    failure_of(d).trap(ConnectionDone, ConnectionLost)


def test_unauthenticated_one_way_boxes_are_never_decoded():
    """Several boxes in one write (no answers asked): none is decoded."""
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    boxes = b""
    for i in range(3):
        b = amp.AmpBox(_command=b"Probe", value=str(i).encode())
        boxes += b.serialize()
    raw.transport.write(boxes)
    pump.flush()
    assert PROBE_ARG.decoded == [] and server.probes == []
    assert dropped(server)


_unpickled = []


def _mark():
    _unpickled.append(True)
    return "marker"


class Marker:
    def __reduce__(self):
        return (_mark, ())


class FakeTask:
    def __init__(self):
        self.got = []

    def _put(self, msg, size=0):
        self.got.append(msg)
        return True


class FakeRuntime:
    """What PeerAMP needs of a runtime."""

    def __init__(self, clock, port):
        self.reactor = clock
        self.location = Location("127.0.0.1", port)
        self.tasks = {}
        self.accepted = []
        self.outcomes = []
        self.executor = None
        self.max_file_size = 0
        self.queued = FlushGroup()
        self.channels = {}

    def stream_root(self, dest, computation):
        return "/nonexistent"  # blobs only: gathered in memory

    def keyring(self, role, computation):
        return keyring(role, computation)

    def _accepted(self, proto):
        self.accepted.append(proto)

    def _lost(self, proto):
        pass

    def remote_outcome(self, tid, blob):
        self.outcomes.append((tid, blob))


class CountingPeer(PeerAMP):
    """A PeerAMP that records the command of every box it receives."""

    def __init__(self, runtime, listening):
        super().__init__(runtime, listening)
        self.received = []

    def ampBoxReceived(self, box):
        if b"_command" in box:
            self.received.append(box[b"_command"])
        super().ampBoxReceived(box)


def peers(authenticate=True):
    clock = Clock()
    srt, crt = FakeRuntime(clock, 1000), FakeRuntime(clock, 2000)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: CountingPeer(srt, True), lambda: CountingPeer(crt, False), clock=clock
    )
    if authenticate:
        d = client.handshake(KEY, "peer", "c1")
        pump.flush()
        result_of(d)
        assert srt.accepted == [server]
        del server.received[:]
    return clock, client, server, pump, srt


def test_peer_messages_before_authentication_are_never_unpickled():
    clock, client, server, pump, srt = peers(authenticate=False)
    task = srt.tasks[1] = FakeTask()
    payload = pickle.dumps(Marker())
    raw = b"".join(
        [
            amp.AmpBox(_command=b"Messages", batch=pack_items([(1, payload)])).serialize(),
            amp.AmpBox(_command=b"Deliver", _ask=b"1", task=b"1", message=payload).serialize(),
        ]
    )
    _unpickled.clear()
    client.transport.write(raw)
    pump.flush()
    assert _unpickled == [] and task.got == []
    assert dropped(server)


def test_peer_deliver_after_authentication_is_dispatched():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    d = client.callRemote(commands.Deliver, task=1, message=serialize.dumps({"x": 1}))
    pump.flush()
    assert result_of(d) == {}
    assert task.got == [{"x": 1}]


# -- the handshake deadline ------------------------------------------------------------


def test_idle_unauthenticated_connection_is_dropped_at_the_deadline():
    """A connection that says no Hello is dropped after HelloTimeout (sooner than a handshake's)."""
    assert config.HelloTimeout < config.HandshakeTimeout
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    lost = []
    server.lost.addCallback(lost.append)
    clock.advance(config.HelloTimeout - 0.5)
    pump.flush()
    assert server.connected and not lost
    clock.advance(0.5)
    pump.flush()
    assert dropped(server)
    assert lost == [None]
    assert not server.authenticated


def test_half_finished_handshake_is_dropped_at_the_deadline():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    h = raw.callRemote(commands.Hello, version=config.ProtocolVersion, role="peer", computation="c1",
                       location="", nonce=auth.new_nonce())
    pump.flush()
    result_of(h)
    # the Hello bought it the handshake's time, no more
    clock.advance(config.HandshakeTimeout - 0.5)
    pump.flush()
    assert server.connected
    clock.advance(0.5)
    pump.flush()
    assert dropped(server) and not server.authenticated


def test_deadline_uses_the_configured_timeout(monkeypatch):
    monkeypatch.setattr(config, "HelloTimeout", 2)
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    clock.advance(1.9)
    pump.flush()
    assert server.connected
    clock.advance(0.1)
    pump.flush()
    assert dropped(server)


def test_connector_side_has_no_deadline():
    clock, client, server, pump = connect()
    assert client._deadline is None
    assert server._deadline is not None and server._deadline.active()
    d = client.handshake(KEY, "peer", "c1")
    pump.flush()
    result_of(d)
    assert not server._deadline or not server._deadline.active()
    assert clock.getDelayedCalls() == []


def test_deadline_is_cancelled_when_the_connection_closes_first():
    clock, raw, server, pump = connect(lambda clock: amp.AMP())
    raw.transport.loseConnection()
    pump.flush()
    assert dropped(server)
    assert clock.getDelayedCalls() == []


def test_callremote_on_a_closed_connection_fails_with_connection_lost_error():
    clock, client, server, pump = connect()
    client.handshake(KEY, "peer", "c1")
    pump.flush()
    server.transport.loseConnection()
    pump.flush()
    failure_of(client.callRemote(Probe, value=1)).trap(ConnectionLostError)


def test_pending_call_fails_with_connection_lost_error_when_the_link_drops():
    clock, client, server, pump = connect()
    client.handshake(KEY, "peer", "c1")
    pump.flush()
    d = watch(client.callRemote(Stall))
    pump.flush()
    assert d == []
    server.transport.loseConnection()  # the link drops before any answer
    pump.flush()
    failure_of(d).trap(ConnectionLostError)


# -- queue() / flush() batching --------------------------------------------------------


def test_queued_messages_go_out_as_one_box_on_the_next_turn_in_order():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[5] = FakeTask()
    for i in range(500):
        client.queue(commands.Messages, 5, serialize.dumps(i))
    pump.flush(advanceClock=False)
    assert server.received == [] and task.got == []  # nothing sent before the reactor turns
    pump.flush()
    assert server.received == [b"Messages"]
    assert task.got == list(range(500))


def test_batches_of_several_commands_and_tasks_keep_their_order():
    clock, client, server, pump, srt = peers()
    t1 = srt.tasks[1] = FakeTask()
    t2 = srt.tasks[2] = FakeTask()
    for i in range(50):
        client.queue(commands.Messages, 1 + i % 2, serialize.dumps(i))
    client.queue(commands.TaskEnded, 9, b"outcome-9")
    client.queue(commands.TaskEnded, 10, b"outcome-10")
    pump.flush()
    assert sorted(server.received) == [b"Messages", b"TaskEnded"]
    assert t1.got == list(range(0, 50, 2))
    assert t2.got == list(range(1, 50, 2))
    assert srt.outcomes == [(9, b"outcome-9"), (10, b"outcome-10")]


def test_queued_items_of_different_commands_keep_their_order():
    """One-way items go out in the order queued: a task's creation before the messages sent to it."""
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    client.queue(commands.Messages, 1, serialize.dumps("a"))
    client.queue(commands.TaskEnded, 9, b"outcome-9")
    client.queue(commands.Messages, 1, serialize.dumps("b"))
    client.queue(commands.Messages, 1, serialize.dumps("c"))
    pump.flush()
    assert server.received == [b"Messages", b"TaskEnded", b"Messages"]
    assert task.got == ["a", "b", "c"] and srt.outcomes == [(9, b"outcome-9")]


def test_callremote_flushes_queued_messages_first():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    client.queue(commands.Messages, 1, serialize.dumps(0))
    client.queue(commands.Messages, 1, serialize.dumps(1))
    d = client.callRemote(commands.Deliver, task=1, message=serialize.dumps(2))
    client.queue(commands.Messages, 1, serialize.dumps(3))
    pump.flush()
    assert result_of(d) == {}
    assert server.received == [b"Messages", b"Deliver", b"Messages"]
    assert task.got == [0, 1, 2, 3]


def test_a_large_batch_is_flushed_at_once():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    big = b"b" * BATCH_BYTES
    client.queue(commands.Messages, 1, serialize.dumps(b"small"))
    client.queue(commands.Messages, 1, serialize.dumps(big))
    assert client._flush_call is None  # sent without waiting for the reactor
    pump.flush(advanceClock=False)
    assert server.received == [b"Messages"]
    assert task.got == [b"small", big]
    assert clock.getDelayedCalls() == []


def test_many_small_messages_use_few_boxes():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    blobs = [serialize.dumps(b"%d" % i + b"." * 1000) for i in range(1000)]  # ~1 MB in all
    for blob in blobs:
        client.queue(commands.Messages, 1, blob)
    pump.flush()
    assert len(task.got) == 1000
    assert task.got == [pickle.loads(b) for b in blobs]
    # flushed at every BATCH_BYTES: a handful of boxes, not one per message
    assert 1 <= len(server.received) <= 1 + sum(len(b) + 12 for b in blobs) // BATCH_BYTES


def test_flush_on_a_closed_connection_drops_the_batch_quietly():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    client.queue(commands.Messages, 1, serialize.dumps(1))
    server.transport.loseConnection()
    pump.flush(advanceClock=False)
    assert not client.connected
    assert client._flush_call is None  # cancelled with the connection
    client.flush()
    assert client._batches == []
    assert task.got == []


def test_messages_for_unknown_tasks_or_bad_pickles_are_skipped():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    client.queue(commands.Messages, 99, serialize.dumps("nobody"))
    client.queue(commands.Messages, 1, b"not a pickle")
    client.queue(commands.Messages, 1, serialize.dumps("ok"))
    pump.flush()
    assert task.got == ["ok"]
    assert server.connected


def test_a_batch_box_goes_straight_to_its_responder(monkeypatch):
    """Authenticated one-way batches skip AMP's dispatch (batch_responder); other boxes do not."""
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    assert set(PeerAMP.batch_responders) >= {b"RunTasks", b"Messages", b"TaskEnded", b"TaskOutput"}
    located = []
    real = server.locateResponder
    monkeypatch.setattr(server, "locateResponder", lambda name: located.append(name) or real(name))
    client.queue(commands.Messages, 1, serialize.dumps("fast"))
    pump.flush()
    assert task.got == ["fast"] and located == []
    # a batch too large for one AMP value (split over keys) takes AMP's way, and arrives the same
    big = serialize.dumps(b"x" * 70_000)
    client.queue(commands.Messages, 1, big)
    pump.flush()
    assert task.got == ["fast", b"x" * 70_000] and located == [b"Messages"]


def test_a_failing_batch_responder_drops_the_connection_as_amp_does():
    clock, client, server, pump, srt = peers()
    client.transport.write(amp.AmpBox(_command=b"Messages", batch=b"\0\0\0").serialize())  # a truncated batch
    pump.flush()
    assert dropped(server)


def test_items_queued_while_a_group_flushes_after_need_no_reactor_call():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    group = client.flush_group
    with group:
        client.queue(commands.Messages, 1, serialize.dumps("a"))
        client.queue(commands.Messages, 1, serialize.dumps("b"))
        assert client._flush_call is None and client in group
    assert client not in group and clock.getDelayedCalls() == []
    pump.flush(advanceClock=False)
    assert task.got == ["a", "b"] and server.received == [b"Messages"]
    # flushed even when the block fails
    try:
        with group:
            client.queue(commands.Messages, 1, serialize.dumps("c"))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    pump.flush(advanceClock=False)
    assert task.got == ["a", "b", "c"]
    # outside such a block: the reactor's next turn, as ever
    client.queue(commands.Messages, 1, serialize.dumps("d"))
    assert client._flush_call is not None


def test_an_oversized_queued_item_does_not_lose_the_others():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    for i in range(3):
        client.queue(commands.Messages, 1, serialize.dumps(i))
    try:
        client.queue(commands.Messages, 1, b"\0" * (config.MaxInlineBytes + 1))
    except PayloadTooLarge:
        pass
    pump.flush()
    assert task.got == [0, 1, 2]


def test_an_oversized_task_outcome_still_reaches_the_creator():  # streamed as a blob
    from types import SimpleNamespace

    from dispycos.peer.runtime import Runtime
    from dispycos.peer.tasks import OK, decode_outcome

    clock = Clock()
    rt = Runtime(clock, threadpool=object())
    rt.location = Location("127.0.0.1", 2000)
    srt = FakeRuntime(clock, 1000)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: CountingPeer(srt, True), lambda: CountingPeer(rt, False), clock=clock
    )
    d = client.handshake(KEY, "peer", "c1")
    pump.flush()
    result_of(d)
    task = SimpleNamespace(tid=7, outcome=(OK, b"r" * (config.MaxInlineBytes + 1)), _creator=client, _in_group=False)
    rt.tasks[7] = task
    try:
        rt.task_done(task)
    except PayloadTooLarge:
        pass
    pump.flush()
    assert [tid for tid, _ in srt.outcomes] == [7]
    # over the inline cap, the outcome is streamed: it arrives whole
    kind, value = decode_outcome(srt.outcomes[0][1])
    assert kind == OK and value == b"r" * (config.MaxInlineBytes + 1)


@pytest.mark.parametrize("reason, gone", [("ConnectionRefusedError", True), ("ConnectionLost", True),
                                           ("TimeoutError", False)])
def test_a_connection_that_cannot_be_made_fails_its_waiters_and_a_gone_server_is_reported(reason, gone):
    # A server that died before our connection to it was made: whoever places
    # work there (a scheduler's lost hook) hears of it as of a broken
    # connection. A timeout says nothing of the server: it stays where work is
    # placed. Either way what waited for the connection fails.
    from twisted.internet import error
    from twisted.internet.testing import MemoryReactorClock

    from dispycos.peer.runtime import Runtime

    reactor = MemoryReactorClock()
    rt = Runtime(reactor, threadpool=object())
    rt.keys[""] = KEY
    unreachable = []
    rt.lost_hooks.append(unreachable.append)
    where = Location("127.0.0.1", 9)
    d = rt.connection(where)
    (host, port, factory, _, _), = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 9) and unreachable == []
    factory.clientConnectionFailed(None, Failure(getattr(error, reason)()))
    assert unreachable == ([where] if gone else [])
    with pytest.raises(ConnectionLostError):
        result_of(d)
    assert where not in rt.links


# -- raw frames (StreamData) ---------------------------------------------------------------


def test_a_blob_goes_as_a_raw_frame_and_boxes_after_it_still_parse():
    from dispycos.protocol.streams import send_blob

    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    data = [b"head", b"x" * 300000, b"tail"]
    d = send_blob(client, data)
    pump.flush()
    client.queue(commands.Messages, 1, serialize.dumps("after"))
    pump.flush()
    sid, _ = result_of(d)
    assert b"".join(server.blobs[sid].pieces) == b"".join(data)
    assert server.received.count(b"StreamData") == 3 and task.got == ["after"]


def _raw_frame(sid, payload, offset=0):
    box = amp.AmpBox(_command=b"StreamData", stream=b"%d" % sid, offset=b"%d" % offset, size=b"%d" % len(payload))
    return box.serialize() + payload


def test_raw_frames_split_anywhere_and_the_parser_resumes_after_them():
    """
    Guards what dispycos._twisted takes from Twisted's AMP parser
    (stop_parsing, take_unparsed): a frame's bytes inside the read that held
    its box, frames cut at every 7 bytes, and boxes right after a frame.
    """
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    d = client.callRemote(commands.StreamOpen, purpose="blob", name="b", dir="", dest="blob", size=26,
                          sha256=b"\0" * 32, overwrite=True, computation="c1")
    pump.flush()
    sid = result_of(d)["stream"]
    after = amp.AmpBox(_command=b"Messages", batch=pack_items([(1, serialize.dumps("next"))])).serialize()
    wire = _raw_frame(sid, b"abcdefghijklm") + after + _raw_frame(sid, b"NOPQRSTUVWXYZ", offset=13) + after
    for i in range(0, len(wire), 7):
        server.dataReceived(wire[i:i + 7])
    assert task.got == ["next", "next"]
    assert b"".join(server.streams.open[sid].pieces) == b"abcdefghijklmNOPQRSTUVWXYZ"
    server.dataReceived(wire[:0] + after)  # whole boxes still parse
    assert task.got == ["next"] * 3


def test_a_raw_frame_out_of_place_is_read_and_dropped_and_the_link_goes_on():
    clock, client, server, pump, srt = peers()
    task = srt.tasks[1] = FakeTask()
    after = amp.AmpBox(_command=b"Messages", batch=pack_items([(1, serialize.dumps("still here"))])).serialize()
    server.dataReceived(_raw_frame(12345, b"\x00\x08_command" * 50) + after)  # no such stream: bytes not parsed
    assert task.got == ["still here"] and server.connected


# -- caps on connections not yet authenticated ------------------------------------------


class _Conn:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def test_pending_connections_push_out_the_oldest_of_one_address():
    pending = PendingConnections(per_address=2, total=10)
    a1, a2, a3, b1 = _Conn("a1"), _Conn("a2"), _Conn("a3"), _Conn("b1")
    assert pending.add(a1, "A") == [] and pending.add(a2, "A") == [] and pending.add(b1, "B") == []
    victims = pending.add(a3, "A")
    assert [v for v, _ in victims] == [a1] and "from its address" in victims[0][1]
    assert pending.count("A") == 2 and pending.count("B") == 1 and len(pending) == 3
    pending.remove(a2)
    pending.remove(a2)  # twice is harmless
    assert pending.count("A") == 1 and len(pending) == 2


def test_pending_connections_push_out_the_oldest_of_all():
    pending = PendingConnections(per_address=5, total=3)
    conns = [_Conn("c%d" % i) for i in range(5)]
    for i, c in enumerate(conns[:3]):
        assert pending.add(c, "addr%d" % i) == []
    victims = pending.add(conns[3], "addr3")
    assert [v for v, _ in victims] == [conns[0]] and "in all" in victims[0][1]
    assert len(pending) == 3 and pending.count("addr0") == 0
    pending.remove(conns[1])
    assert pending.add(conns[4], "addr4") == [] and len(pending) == 3


def test_a_listener_drops_the_oldest_silent_connection_for_a_new_one(monkeypatch):
    """Idle connections from one address cannot lock out a peer that then proves the secret."""
    monkeypatch.setattr(config, "MaxPendingPerAddress", 3)
    clock = Clock()
    factory = Factory()
    factory.protocol = lambda: Listener(clock)
    idle = []
    for _ in range(3):
        server = factory.buildProtocol(None)
        raw = amp.AMP()
        pump = iosim.connect(server, iosim.makeFakeServer(server), raw, iosim.makeFakeClient(raw), clock=clock)
        idle.append((server, pump))
    assert all(s.connected for s, _ in idle)
    server = factory.buildProtocol(None)
    client = Connector(clock)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
    for _, p in idle:
        p.flush()
    assert dropped(idle[0][0]) and not dropped(idle[1][0]) and not dropped(idle[2][0])
    d = client.handshake(KEY, "peer", "c1")
    pump.flush()
    result_of(d)
    assert server.authenticated and len(factory.dispycos_pending) == 2


# -- discovery -----------------------------------------------------------------------------


def test_discovery_reads_what_came_before_its_key_once_the_key_is_known():
    # A node's key is stretched once its servers are up: a probe that comes
    # right after it says ready is answered then, not lost (a bounded few are kept).
    from twisted.internet.testing import MemoryReactorClock

    from dispycos.protocol import discovery

    got = []
    d = discovery.Discovery(MemoryReactorClock(), ["127.0.0.1"], 0, None, lambda msg, addr: got.append(msg["n"]))
    packets = [discovery.encode(KEY, {"kind": "probe", "n": i}) for i in range(discovery.HELD_PACKETS + 3)]
    for pkt in packets:
        d._received(pkt, ("127.0.0.1", 9))
    assert got == [] and d.dropped == 3
    d.key = KEY
    assert got == list(range(discovery.HELD_PACKETS))
    d._received(packets[0], ("127.0.0.1", 9))  # read already: a replay
    d._received(discovery.encode(KEY, {"kind": "probe", "n": "late"}), ("127.0.0.1", 9))
    assert got[-1] == "late" and len(got) == discovery.HELD_PACKETS + 1
