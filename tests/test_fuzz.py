"""
Property-based fuzzing (hypothesis) of a LIVE node and its servers on
127.0.0.1: AMP framing and every command's arguments over TCP (before and
after authentication), and the UDP discovery port.

Payload values carry a pickle whose unpickling creates a marker file: it must
never appear (no byte from an unauthenticated peer is unpickled). Before
authentication the only answers a peer may get are Hello's (and AUTH /
UNKNOWN errors): any other answer or error code means a command got past the
gate. Meanwhile a correct computation keeps running on the node, and another
one runs after the fuzzing.

The fuzzing runs in a worker thread over blocking sockets; the reactor keeps
running the correct client meanwhile.
"""

import functools
import json
import math
import os
import pickle
import socket
import struct
import time

import psutil
import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, threads
from twisted.protocols import amp

from dispycos import Computation, Scheduler, config
from dispycos.protocol import discovery
from dispycos.protocol import auth, commands
from dispycos.protocol.arguments import pack_items

from .conftest import NodeProcess
from .test_hostile import Marker, RawAMP, box, frame, parse_boxes, sleep, square

MiB = 1024 * 1024

#: Hypothesis examples per strategy (the test asserts the total it ran).
TCP_EXAMPLES = {"boxes": 5000, "raw": 2500, "hello": 3000, "authenticated": 1200}
UDP_EXAMPLES = 5200  # each sent to 127.0.0.1 and to 127.255.255.255

COMMAND_NAMES = sorted(
    name.encode() for name, c in vars(commands).items()
    if isinstance(c, type) and issubclass(c, amp.Command) and c is not amp.Command
)


def _argument_names():
    names = {b"_command", b"_ask", b"_answer", b"_error", b"_error_code", b"_error_description"}
    for c in vars(commands).values():
        if isinstance(c, type) and issubclass(c, amp.Command):
            for name, _ in list(c.arguments) + list(getattr(c, "response", [])):
                names.update([name, name + b".2", name + b".3"])
    return sorted(names)


ARGUMENT_NAMES = _argument_names()
#: What a node link may answer before authentication: Hello's answer, and errors.
HELLO_ANSWER_KEYS = {b"_answer", b"version", b"location", b"nonce", b"proof"}
PREAUTH_ERROR_CODES = {b"AUTH", b"UNKNOWN"}

SETTINGS = dict(
    deadline=None,
    database=None,
    derandomize=False,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


# -- strategies ------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def payload_values(marker_pickles):
    """
    Values for AMP keys: command names, marker pickles, numbers, text, big
    blobs, junk. (Built once per tuple of pickles: building and validating
    strategies at every draw was most of the fuzzing's time.)
    """
    marker = st.sampled_from(marker_pickles)
    return st.one_of(
        st.sampled_from(COMMAND_NAMES),
        marker,
        st.builds(lambda m, n: pack_items([(n, m)] * 2), marker, st.integers(0, 2 ** 64 - 1)),
        st.builds(lambda a, m, b: a + m + b, st.binary(max_size=20), marker, st.binary(max_size=20)),
        st.integers(-2 ** 70, 2 ** 70).map(lambda i: str(i).encode()),
        st.sampled_from([b"True", b"False", b"nan", b"inf", b"-inf", b"1e309", b"", b"\x00", b"0x10"]),
        st.text(max_size=40).map(lambda t: t.encode("utf-8")),
        st.binary(max_size=64),
        st.binary(min_size=32, max_size=32),
        st.integers(1000, 65535).map(lambda n: b"v" * n),  # huge lengths, cheap to draw
    )


@functools.lru_cache(maxsize=None)
def keys():
    return st.one_of(
        st.sampled_from(ARGUMENT_NAMES),
        st.binary(min_size=1, max_size=12),
        st.text(min_size=1, max_size=8).map(lambda t: t.encode("utf-8")[:255] or b"k"),
        st.integers(200, 255).map(lambda n: b"K" * n),
    )


_COMMAND_KEYS = st.one_of(st.sampled_from(COMMAND_NAMES), st.binary(min_size=1, max_size=20))
_ASK_VALUES = st.one_of(st.integers(0, 999).map(lambda i: b"%d" % i), st.binary(max_size=4))


@functools.lru_cache(maxsize=None)
def _pairs(marker_pickles):
    return st.lists(st.tuples(keys(), payload_values(marker_pickles)), max_size=6)


@st.composite
def amp_boxes(draw, marker_pickles):
    pairs = []
    if draw(st.integers(0, 9)):
        pairs.append((b"_command", draw(_COMMAND_KEYS)))
    if draw(st.booleans()):
        pairs.append((b"_ask", draw(_ASK_VALUES)))
    pairs += draw(_pairs(tuple(marker_pickles)))
    return pairs


@functools.lru_cache(maxsize=None)
def _box_lists(marker_pickles):
    return st.lists(amp_boxes(marker_pickles), min_size=1, max_size=5)


_HOW = st.sampled_from(["as is", "as is", "truncate", "lying length", "empty key", "junk", "huge prefix"])


@st.composite
def amp_streams(draw, marker_pickles):
    """Validly framed boxes, then maybe broken: truncated, a lying length, a stray empty key, junk."""
    data = b"".join(frame(p) for p in draw(_box_lists(tuple(marker_pickles))))
    how = draw(_HOW)
    if how == "truncate":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "lying length":
        at = draw(st.integers(0, max(0, len(data) - 2)))
        data = data[:at] + struct.pack("!H", draw(st.integers(0, 65535))) + data[at + 2:]
    elif how == "empty key":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00\x00" + data[at:]
    elif how == "junk":
        data += draw(st.binary(max_size=200))
    elif how == "huge prefix":
        data = struct.pack("!H", 8) + b"_command" + struct.pack("!H", 65535) + data
    return data


@st.composite
def raw_bytes(draw, marker_pickles):
    data = draw(st.binary(max_size=3000))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(marker_pickles)) + data[at:]
    return data


@st.composite
def hello_then(draw, marker_pickles, computations):
    role = draw(st.sampled_from(["scheduler", "peer", "client", "node", ""]) | st.text(max_size=10))
    nonce = draw(st.binary(min_size=32, max_size=32) | st.binary(max_size=40))
    hello = box(b"Hello", draw(st.integers(0, 99)), version=config.ProtocolVersion, role=role.encode("utf-8"),
                computation=draw(st.sampled_from(computations) | st.text(max_size=8)).encode("utf-8"),
                location=draw(st.text(max_size=30)).encode("utf-8"), nonce=nonce)
    extra = []
    if draw(st.booleans()):
        extra.append(box(b"Authenticate", draw(st.integers(100, 199)), proof=draw(st.binary(max_size=40))))
    extra.append(draw(amp_streams(marker_pickles) | raw_bytes(marker_pickles)))
    return hello + b"".join(draw(st.permutations(extra)))


# -- sending a case --------------------------------------------------------------------------


def send_case(target, data, read_for=3.0):
    """
    One unauthenticated connection: send C{data}, close our side, read what
    comes back until the peer closes (bounded). Returns the bytes received.
    """
    s = socket.create_connection(target, timeout=5)
    got = b""
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # dropped mid-send: fine
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        # RST, not FIN: thousands of connections must not pile up in TIME_WAIT.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return got


def check_preauth_replies(got, data):
    for b in parse_boxes(got):
        if b"_answer" in b:
            assert set(b) == HELLO_ANSWER_KEYS, "answer to a command past the gate: %r (sent %r)" % (b, data[:300])
        elif b"_error" in b:
            assert b.get(b"_error_code") in PREAUTH_ERROR_CODES, "error past the gate: %r (sent %r)" % (b, data[:300])
        else:
            raise AssertionError("unexpected box before authentication: %r" % (b,))


class Fuzzer:
    """Runs the hypothesis properties against live targets; counts what it sent."""

    def __init__(self, targets, marker, computations, node, key):
        self.targets = targets
        self.marker = marker
        self.pickles = [pickle.dumps(Marker(marker), protocol=p) for p in (2, 4, 5)] + [
            pickle.dumps(((Marker(marker),), {})), pickle.dumps({"m": Marker(marker)})]
        self.computations = computations
        self.node = node
        self.key = key
        self.cases = {}
        self.connections = 0
        self.boxes = 0
        self.bytes = 0
        self.deadline = time.monotonic() + 240

    def _one(self, kind, target_index, data):
        assert time.monotonic() < self.deadline, "fuzzing over its time budget"
        target = self.targets[target_index % len(self.targets)]
        got = send_case(target, data)
        self.connections += 1
        self.bytes += len(data)
        self.boxes += data.count(b"\x00\x08_command")
        self.cases[kind] = self.cases.get(kind, 0) + 1
        check_preauth_replies(got, data)
        assert not os.path.exists(self.marker), "unpickled before authentication: %r" % (data[:300],)
        assert self.node.proc.poll() is None, "the node died"

    def run_preauth(self):
        pickles, comps = self.pickles, self.computations
        n = len(self.targets)

        @settings(max_examples=TCP_EXAMPLES["boxes"], **SETTINGS)
        @given(st.integers(0, n - 1), amp_streams(pickles))
        def boxes(t, data):
            self._one("boxes", t, data)

        @settings(max_examples=TCP_EXAMPLES["raw"], **SETTINGS)
        @given(st.integers(0, n - 1), raw_bytes(pickles))
        def raw(t, data):
            self._one("raw", t, data)

        @settings(max_examples=TCP_EXAMPLES["hello"], **SETTINGS)
        @given(st.integers(0, n - 1), hello_then(pickles, comps))
        def hello(t, data):
            self._one("hello", t, data)

        for prop in (boxes, raw, hello):
            prop()

    def run_authenticated(self, node_target):
        """
        After authentication (as a scheduler, to the node): random commands
        with random arguments (no marker: an authenticated peer may send
        pickles). Each errbacks or drops that link only; the node lives on.
        """
        names = st.sampled_from([b"NodeInfo", b"Pulse", b"Reserve", b"EnableServer", b"CloseServer", b"Release",
                                 b"StreamOpen", b"StreamChunk", b"StreamClose", b"StreamAbort", b"RunTask",
                                 b"Messages", b"Hello", b"Authenticate"]) | st.sampled_from(COMMAND_NAMES)
        values = st.one_of(
            st.integers(-2 ** 64, 2 ** 64).map(lambda i: str(i).encode()),
            st.sampled_from([b"True", b"False", b"nan", b"inf", b"", b"node", b"blob", b"file", b"x" * 32]),
            st.text(max_size=30).map(lambda t: t.encode("utf-8")),
            st.binary(max_size=64),
            st.integers(1000, 65535).map(lambda n: b"w" * n),
        )
        arg_keys = st.sampled_from(ARGUMENT_NAMES) | st.binary(min_size=1, max_size=8)

        @st.composite
        def command_boxes(draw):
            pairs = [(b"_command", draw(names))]
            if draw(st.integers(0, 4)):
                pairs.append((b"_ask", b"%d" % draw(st.integers(1, 10 ** 6))))
            pairs += draw(st.lists(st.tuples(arg_keys, values), max_size=8))
            return frame(pairs)

        @settings(max_examples=TCP_EXAMPLES["authenticated"], **SETTINGS)
        @given(st.lists(command_boxes(), min_size=1, max_size=8))
        def authenticated(boxes):
            assert time.monotonic() < self.deadline, "fuzzing over its time budget"
            raw = RawAMP(*node_target)
            try:
                raw.handshake(self.key, "scheduler")
                try:
                    raw.send(b"".join(boxes))
                    raw.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                raw.read_until_closed(5)
            finally:
                raw.close()
            self.connections += 1
            self.boxes += len(boxes)
            self.cases["authenticated"] = self.cases.get("authenticated", 0) + 1
            assert self.node.proc.poll() is None, "the node died"

        authenticated()


# -- the TCP fuzz ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_node():
    n = NodeProcess(cpus=2)
    yield n
    n.stop()


@pytest_twisted.ensureDeferred
async def test_fuzz_tcp_node_and_servers(fuzz_node, tmp_path):
    node = fuzz_node
    marker = str(tmp_path / "unpickled")
    host, port = node.location.rsplit(":", 1)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([square])
    stop, errors, rounds = [], [], [0]

    async def legit():
        deadline = time.monotonic() + 400
        while not stop and time.monotonic() < deadline:
            try:
                got = await comp.run_results(square, range(8))
                assert got == [i * i for i in range(8)], got
                rounds[0] += 1
            except Exception as e:
                errors.append(e)
                return
            await sleep(0.1)

    started = time.monotonic()
    try:
        await comp.schedule(timeout=30)
        servers = await comp.servers()
        targets = [(host, int(port))] + [(s.addr, s.port) for s in servers]
        fuzzer = Fuzzer(targets, marker, [comp.id, ""], node, auth.key_from_secret(node.secret))
        background = defer.ensureDeferred(legit())
        try:
            await threads.deferToThread(fuzzer.run_preauth)
            preauth_rounds = rounds[0]
            await threads.deferToThread(fuzzer.run_authenticated, (host, int(port)))
        finally:
            stop.append(True)
            await background
        assert not errors, "the correct computation failed during the fuzzing: %r" % (errors,)
        assert preauth_rounds >= 1 and rounds[0] > preauth_rounds
        assert await comp.run_results(square, range(8)) == [i * i for i in range(8)]
    finally:
        await comp.close()
        await scheduler.close()
    took = time.monotonic() - started
    # The node serves the next computation.
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([square])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_results(square, range(10)) == [i * i for i in range(10)]
    finally:
        await comp.close()
        await scheduler.close()
    assert not os.path.exists(marker)
    assert node.proc.poll() is None
    preauth = sum(v for k, v in fuzzer.cases.items() if k != "authenticated")
    log = node.output()
    print("node log after the fuzzing: %.1f MB, %d tracebacks, %d 'refused command' lines"
          % (len(log) / 1e6, log.count("Traceback"), log.count("refused command")))
    print("TCP fuzz: %s cases (%d before authentication), %d connections, ~%d boxes, %.1f MB sent, "
          "%d correct rounds meanwhile, %.0fs" % (fuzzer.cases, preauth, fuzzer.connections, fuzzer.boxes,
                                                 fuzzer.bytes / 1e6, rounds[0], took))
    assert preauth >= 10000


# -- the UDP fuzz --------------------------------------------------------------------------------


def signed(key, body):
    """A packet with a valid tag over any body (even one that is not JSON)."""
    import hashlib
    import hmac

    return discovery.MAGIC + body + hmac.new(key, discovery.MAGIC + body, hashlib.sha256).digest()


# Built once (building and validating strategies at every draw costs more than the draws).
_UDP_KINDS = st.sampled_from(["bytes", "pickle", "json junk", "wrong key", "bad tag", "signed junk",
                              "signed odd fields", "oversized", "old", "valid probe"])
_JUNK_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def udp_packets(draw, key, marker_pickle, reply_port):
    wrong = auth.key_from_secret("not the secret")
    kind = draw(_UDP_KINDS)
    junk_json = _JUNK_JSON
    msg = {"kind": draw(st.sampled_from(["probe", "announce", "find", "scheduler", "x"])),
           "role": draw(st.sampled_from(["scheduler", "node", "client", ""])),
           "reply_port": draw(st.sampled_from([reply_port, 0, -1, 65536, True, "9706", None, 1.5]))}
    if kind == "bytes":
        return draw(st.binary(max_size=1500))
    if kind == "pickle":
        return draw(st.sampled_from([b"", discovery.MAGIC])) + marker_pickle + draw(st.binary(min_size=32, max_size=32))
    if kind == "json junk":
        body = json.dumps(draw(junk_json)).encode()
        return discovery.MAGIC + body + draw(st.binary(min_size=32, max_size=32))
    if kind == "wrong key":
        return discovery.encode(wrong, msg)
    if kind == "bad tag":
        at, flip = draw(st.integers(0, 10 ** 6)), draw(st.integers(1, 255))  # drawn before the packet,
        pkt = discovery.encode(key, msg)  # whose length varies with its timestamp
        at %= len(pkt)
        return pkt[:at] + bytes([pkt[at] ^ flip]) + pkt[at + 1:]
    if kind == "signed junk":
        return signed(key, draw(st.binary(max_size=300) | st.sampled_from([b"{", b"[]", b"null", b"\xff\xfe"])
                                | junk_json.map(lambda j: json.dumps(j).encode())))
    if kind == "signed odd fields":
        odd = dict(msg, nonce=draw(st.sampled_from([None, 5, "n" + str(draw(st.integers()))])),
                   ts=draw(st.sampled_from([None, "now", -1e300, 1e300, float("inf"), time.time()])),
                   version=draw(st.sampled_from([config.ProtocolVersion, 0, config.ProtocolVersion + 1, str(config.ProtocolVersion), None])))
        return signed(key, json.dumps(odd).encode())
    if kind == "oversized":
        return discovery.encode(key, dict(msg, pad="p" * draw(st.integers(discovery.MAX_PACKET, 60000))))
    if kind == "valid probe":  # answered: shows the node reads the fuzzed port meanwhile
        return discovery.encode(key, {"kind": "probe", "role": "scheduler", "reply_port": reply_port})
    # "old": a correctly signed probe from long ago
    body = json.dumps(dict(msg, nonce=os.urandom(12).hex(), ts=time.time() - 10 * discovery.MAX_AGE,
                           version=config.ProtocolVersion), separators=(",", ":"), sort_keys=True).encode()
    return signed(key, body)


def answers(sock, key, seconds):
    """Valid discovery packets received on C{sock} within C{seconds}."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            break
        msg = discovery.decode(key, data, discovery.ReplayGuard())
        assert msg is not None, "the node sent a packet that does not verify: %r" % (data[:200],)
        got.append(msg)
    return got


@pytest_twisted.ensureDeferred
async def test_fuzz_udp_discovery(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    marker = str(tmp_path / "unpickled")
    key = auth.key_from_secret(node.secret)
    proc = psutil.Process(node.proc.pid)
    udp_port = config.NodePort
    dests = [("127.0.0.1", udp_port), ("127.255.255.255", udp_port)]

    def fuzz():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        reply_port = rx.getsockname()[1]
        stats = {"packets": 0, "examples": 0, "bytes": 0}
        try:
            # A fresh signed probe is answered; the same packet replayed is not.
            probe = discovery.encode(key, {"kind": "probe", "role": "scheduler", "reply_port": reply_port})
            tx.sendto(probe, dests[1])
            first = answers(rx, key, 3)
            for _ in range(20):
                tx.sendto(probe, dests[1])
            replayed = answers(rx, key, 1.5)
            stats["fresh probe answers"] = len([m for m in first if m.get("kind") == "announce"])
            stats["replay answers"] = len(replayed)

            cpu0 = sum(proc.cpu_times()[:2])
            rss0 = proc.memory_info().rss
            peak = [0]
            deadline = time.monotonic() + 120

            @settings(max_examples=UDP_EXAMPLES, **SETTINGS)
            @given(udp_packets(key, pickle.dumps(Marker(marker)), reply_port))
            def one(pkt):
                assert time.monotonic() < deadline, "UDP fuzzing over its time budget"
                for dest in dests:
                    try:
                        tx.sendto(pkt, dest)
                    except OSError:  # over the datagram limit
                        continue
                    stats["packets"] += 1
                    stats["bytes"] += len(pkt)
                stats["examples"] += 1
                if stats["examples"] % 250 == 0:
                    time.sleep(0.01)  # let the node keep up (its socket buffer is finite)
                    peak[0] = max(peak[0], proc.memory_info().rss - rss0)
                    assert not os.path.exists(marker)
                    assert node.proc.poll() is None

            started = time.monotonic()
            one()
            stats["seconds"] = time.monotonic() - started
            # Whatever odd probes were answered, every answer verified (checked in answers()).
            stats["answers to fuzz"] = len(answers(rx, key, 1.0))
            time.sleep(1.0)
            stats["cpu seconds"] = sum(proc.cpu_times()[:2]) - cpu0
            stats["rss growth"] = max(peak[0], proc.memory_info().rss - rss0)
            # The node still answers a fresh probe.
            tx.sendto(discovery.encode(key, {"kind": "probe", "role": "scheduler", "reply_port": reply_port}),
                      dests[1])
            stats["fresh probe answers after"] = len([m for m in answers(rx, key, 3) if m.get("kind") == "announce"])
        finally:
            tx.close()
            rx.close()
        return stats

    stats = await threads.deferToThread(fuzz)
    print("UDP fuzz: %d packets (%d examples x 2 destinations), %.1f MB in %.1fs; node CPU %.1fs, RSS %+.1f MiB; "
          "fresh probe answered %d, replays answered %d, answered after %d; %d answers to fuzzed probes"
          % (stats["packets"], stats["examples"], stats["bytes"] / 1e6, stats["seconds"], stats["cpu seconds"],
             stats["rss growth"] / MiB, stats["fresh probe answers"], stats["replay answers"],
             stats["fresh probe answers after"], stats["answers to fuzz"]))
    assert stats["packets"] >= 10000
    assert not os.path.exists(marker)
    assert node.proc.poll() is None
    assert stats["fresh probe answers"] == 1 and stats["replay answers"] == 0
    assert stats["fresh probe answers after"] == 1
    assert stats["answers to fuzz"] >= 1
    assert stats["rss growth"] < 50 * MiB
    assert stats["cpu seconds"] < stats["seconds"] + 5
    # A scheduler that lists no node still discovers this one by broadcast, and runs a computation.
    scheduler = Scheduler(secret=node.secret)
    comp = Computation([square])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_results(square, range(6)) == [i * i for i in range(6)]
        assert [s.addr for s in await comp.servers()] == ["127.0.0.1"]
    finally:
        await comp.close()
        await scheduler.close()


def test_signed_packet_with_a_current_timestamp_is_accepted():
    """The control for the NaN case below: the same packet with a real timestamp verifies."""
    key = auth.key_from_secret("k")
    body = json.dumps({"kind": "probe", "nonce": "n1", "ts": time.time(), "version": config.ProtocolVersion}).encode()
    assert discovery.decode(key, signed(key, body), discovery.ReplayGuard()) is not None


def test_discovery_nan_timestamp_is_not_fresh():
    key = auth.key_from_secret("k")
    body = json.dumps({"kind": "probe", "nonce": "n2", "ts": math.nan, "version": config.ProtocolVersion}).encode()
    assert b"NaN" in body
    assert discovery.decode(key, signed(key, body), discovery.ReplayGuard()) is None
