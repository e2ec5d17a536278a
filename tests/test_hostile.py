"""
Hostile peers against a real node and its servers on 127.0.0.1: malformed and
oversized AMP boxes, unknown and out-of-order commands, truncated streams,
messages for unknown tasks, a peer that stops reading, and a mailbox flood.

Every abuse runs in a worker thread over raw sockets (so the reactor keeps
running a correct computation meanwhile), and every test checks that the
offending connection or call alone suffers: the concurrent computation
completes with correct results.

Tests that once showed product bugs (fixed since) say what
is wrong and where.
"""

import os
import pickle
import socket
import struct
import time

import psutil
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.internet.task import deferLater

import dispycos
from dispycos import config
from dispycos.protocol import auth
from dispycos.protocol.arguments import pack_items

from . import conftest
from .conftest import NodeProcess

MiB = 1024 * 1024

# -- raw AMP, spoken by hand (so nothing here trusts the product's own codec) ------------


def frame(pairs):
    """AMP framing of C{(key, value)} byte pairs, then the empty key that ends a box."""
    out = []
    for k, v in pairs:
        out.append(struct.pack("!H", len(k)) + k + struct.pack("!H", len(v)) + v)
    out.append(b"\x00\x00")
    return b"".join(out)


def box(command, ask=None, **values):
    """
    One AMP command box; C{values} are bytes or str()-ed. Values over 65535
    bytes are split over C{name}, C{name.2}, ... as BigBytes arguments are.
    """
    pairs = [(b"_command", command)]
    if ask is not None:
        pairs.append((b"_ask", str(ask).encode()))
    for k, v in values.items():
        v = v if isinstance(v, bytes) else str(v).encode()
        name = k.encode()
        pairs.append((name, v[:0xFFFF]))
        for i, start in enumerate(range(0xFFFF, len(v), 0xFFFF), 2):
            pairs.append((b"%s.%d" % (name, i), v[start:start + 0xFFFF]))
    return frame(pairs)


def parse_boxes(data):
    """The complete boxes in C{data} (a trailing partial box is ignored)."""
    boxes, i, cur, key = [], 0, {}, None
    while i + 2 <= len(data):
        (n,) = struct.unpack_from("!H", data, i)
        if i + 2 + n > len(data):
            break
        s = data[i + 2:i + 2 + n]
        i += 2 + n
        if key is None:
            if not s:
                boxes.append(cur)
                cur = {}
            else:
                key = s
        else:
            cur[key] = s
            key = None
    return boxes


class RawAMP:
    """A blocking AMP client over a plain socket, for one test thread."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.asks = 0

    def send(self, data):
        self.sock.sendall(data)

    def call(self, command, timeout=10, **values):
        """Send a command and wait (bounded) for its answer or error box."""
        self.asks += 1
        tag = b"%d" % self.asks
        self.send(box(command, self.asks, **values))
        return self.wait(tag, timeout)

    def wait(self, tag, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            for b in parse_boxes(self.buf):
                if b.get(b"_answer") == tag or b.get(b"_error") == tag:
                    return b
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer to %r within %ss" % (tag, timeout))
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("connection closed; got %r" % parse_boxes(self.buf))
            self.buf += chunk

    def read_until_closed(self, timeout=5):
        """Read until the peer closes (True) or C{timeout} passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def handshake(self, key, role, computation="", location="127.0.0.1:1"):
        """Prove the secret as the dispycos connector does."""
        mine = auth.new_nonce()
        r = self.call(b"Hello", version=config.ProtocolVersion, role=role, computation=computation,
                      location=location, nonce=mine)
        assert b"_answer" in r, r
        bound = auth.context(config.ProtocolVersion, computation, location, r[b"location"].decode(), b"plain")
        assert auth.check(auth.listener_proof(key, mine, r[b"nonce"], role, bound), r[b"proof"])
        r = self.call(b"Authenticate", proof=auth.connector_proof(key, r[b"nonce"], mine, role, bound))
        assert b"_answer" in r, r
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def addr_of(node):
    host, port = node.location.rsplit(":", 1)
    return host, int(port)


def node_key(node):
    return auth.key_from_secret(node.secret)


def scheduler_link(node):
    """An authenticated raw connection to the node, as a scheduler."""
    raw = RawAMP(*addr_of(node))
    raw.handshake(node_key(node), "scheduler")
    return raw


def peer_link(comp, location):
    """An authenticated raw connection to a server of C{comp}, as a peer of the computation."""
    raw = RawAMP(location.addr, location.port)
    raw.handshake(comp.key, "peer", comp.id)
    return raw


def closed_by_peer(host, port, data, timeout=5):
    """Send C{data} unauthenticated; True when the peer then drops the connection."""
    raw = RawAMP(host, port)
    try:
        try:
            raw.send(data)
        except OSError:
            return True
        return raw.read_until_closed(timeout)
    finally:
        raw.close()


class Marker:
    """Unpickling this creates the file at C{path}."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def rss(pid):
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


def new_log(node, mark):
    return node.output()[mark:]


# -- task functions (shipped by value) --------------------------------------------------


def square(x):
    return x * x


def make_blob(n):
    return b"x" * n


def big_later(n, delay, task=None):
    yield task.sleep(delay)
    return b"x" * n


def waiter(task=None):
    msg = yield task.receive(timeout=60)
    return msg


def hoard(flag, limit, task=None):
    """Never reads its mailbox: waits for the file C{flag}, then reports its length."""
    import os as _os

    waited = 0.0
    while not _os.path.exists(flag) and waited < limit:
        yield task.sleep(0.1)
        waited += 0.1
    return len(task.mailbox)


def server_pid(task=None):
    yield task.sleep(0)
    import os as _os

    return _os.getpid()


# -- a correct computation running while the abuse goes on ------------------------------


def Session(node, components=(square,), **kw):
    return conftest.Session(node, list(components), **kw)


async def alongside(comp, abuse, *args, max_seconds=240):
    """
    Run C{abuse(*args)} in a worker thread while C{comp} keeps running tasks;
    check every round's results, and that at least one round completed during
    the abuse and one after it. Returns C{(abuse's result, rounds)}.
    """
    stop = []
    errors = []
    rounds = [0]

    async def legit():
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            try:
                got = await comp.run_results(square, range(6))
                if got != [i * i for i in range(6)]:
                    raise AssertionError("wrong results %r" % (got,))
            except Exception as e:
                errors.append(e)
                return
            rounds[0] += 1
            if stop:
                return
            await sleep(0.05)

    background = defer.ensureDeferred(legit())
    try:
        result = await threads.deferToThread(abuse, *args)
    finally:
        stop.append(True)
        await background
    assert not errors, "the correct computation failed during the abuse: %r" % (errors,)
    assert rounds[0] >= 1
    assert await comp.run_results(square, range(6)) == [i * i for i in range(6)]
    return result, rounds[0]


@pytest.fixture(scope="module")
def hnode():
    n = NodeProcess(cpus=2)
    yield n
    n.stop()


# -- malformed boxes ---------------------------------------------------------------------


def malformed_inputs(marker):
    payload = pickle.dumps(Marker(marker))
    return {
        "empty box": b"\x00\x00",
        "stray answer": frame([(b"_answer", b"7"), (b"x", payload)]),
        "stray error": frame([(b"_error", b"7"), (b"_error_code", b"X"), (b"_error_description", payload)]),
        "no command key": frame([(b"_ask", b"1"), (b"components", payload)]),
        "key over 255 bytes": struct.pack("!H", 300) + b"k" * 300,
        "value length lies": struct.pack("!H", 8) + b"_command" + struct.pack("!H", 65535) + b"Hello" + payload,
        "Hello, bad integer": box(b"Hello", 1, version="one", role="scheduler", computation="", location="",
                                  nonce=b"n" * 32),
        "Hello, bad UTF-8": box(b"Hello", 1, version=config.ProtocolVersion, role=b"\xff\xfe", computation="", location="",
                                nonce=b"n" * 32),
        "Hello, missing nonce": box(b"Hello", 1, version=config.ProtocolVersion, role="scheduler", computation="", location=""),
        "Hello, wrong version": box(b"Hello", 1, version=99, role="scheduler", computation="", location="",
                                    nonce=b"n" * 32),
        "Hello, short nonce": box(b"Hello", 1, version=config.ProtocolVersion, role="scheduler", computation="", location="",
                                  nonce=b"n"),
        "pickle in Reserve": box(b"Reserve", 1, computation="x", key=b"k" * 32, cpus=0, components=payload,
                                 files=payload, client="127.0.0.1:1"),
        "pickle in Messages": box(b"Messages", batch=pack_items([(1, payload)])),
        "unknown command": box(b"NoSuchCommand", 1, x=payload),
        "non-ASCII command": box("Prüfung".encode(), 1, x=payload),
    }


@pytest_twisted.ensureDeferred
async def test_malformed_boxes_drop_only_that_connection(hnode, tmp_path):
    marker = str(tmp_path / "unpickled")
    async with Session(hnode) as comp:
        servers = await comp.servers()
        targets = [addr_of(hnode)] + [(s.addr, s.port) for s in servers]

        def abuse():
            kept_open = []
            for host, port in targets:
                for name, data in malformed_inputs(marker).items():
                    if not closed_by_peer(host, port, data, timeout=1 if name == "value length lies" else 5):
                        kept_open.append((port, name))
            return kept_open

        kept_open, rounds = await alongside(comp, abuse)
    assert not os.path.exists(marker)
    # A partial box (the lying length) waits for the rest, and the wrong
    # version is an error answer only: both are then dropped by the
    # handshake deadline, tested below. Everything else is dropped at once.
    assert {name for _, name in kept_open} <= {"value length lies"}, kept_open
    out = hnode.output()
    assert "refused command b'NoSuchCommand'" in out
    assert "refused command b'Reserve'" in out


@pytest_twisted.ensureDeferred
async def test_silent_or_partial_handshake_dropped_after_deadline(hnode):
    async with Session(hnode) as comp:
        def abuse():
            host, port = addr_of(hnode)
            raws = [RawAMP(host, port) for _ in range(3)]
            try:
                raws[1].send(struct.pack("!H", 8) + b"_command")  # a partial box
                raws[2].send(box(b"Hello", 1, version=config.ProtocolVersion, role="scheduler", computation="", location="",
                                 nonce=b"n" * 32))  # a Hello, then nothing
                started = time.monotonic()
                closed = [r.read_until_closed(config.HandshakeTimeout + 5) for r in raws]
                return closed, time.monotonic() - started
            finally:
                for r in raws:
                    r.close()

        (closed, took), _ = await alongside(comp, abuse)
    assert closed == [True, True, True]
    assert took < config.HandshakeTimeout + 5
    assert "no handshake within" in hnode.output()


@pytest_twisted.ensureDeferred
async def test_unauthenticated_garbage_logs_one_line_not_a_traceback(hnode, tmp_path):
    marker = str(tmp_path / "m")
    mark = len(hnode.output())
    inputs = malformed_inputs(marker)

    def abuse():
        host, port = addr_of(hnode)
        for name in ("empty box", "stray answer", "stray error", "Hello, bad integer", "Hello, missing nonce"):
            closed_by_peer(host, port, inputs[name])

    await threads.deferToThread(abuse)
    await sleep(0.5)
    log = new_log(hnode, mark)
    assert "Traceback" not in log, log[-3000:]


@pytest_twisted.ensureDeferred
async def test_refused_pipelined_boxes_log_one_line(hnode):
    mark = len(hnode.output())

    def abuse():
        host, port = addr_of(hnode)
        raw = RawAMP(host, port)
        try:
            raw.send(b"".join(box(b"NodeInfo", i) for i in range(300)))
            raw.read_until_closed(5)
        finally:
            raw.close()

    await threads.deferToThread(abuse)
    await sleep(0.5)
    lines = [line for line in new_log(hnode, mark).splitlines() if "refused command" in line]
    assert 1 <= len(lines) <= 2, "%d 'refused command' lines for one connection" % len(lines)


# -- oversized boxes ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_oversized_boxes_drop_only_that_connection(hnode):
    async with Session(hnode) as comp:
        servers = await comp.servers()

        def abuse():
            host, port = addr_of(hnode)
            out = {}
            # Before authentication: a 65535-byte value, then more; 100,000 keys.
            big_value = frame([(b"_command", b"Hello"), (b"_ask", b"1"), (b"nonce", b"n" * 65535)]) + b"x" * 200000
            out["pre-auth 64K value"] = closed_by_peer(host, port, big_value)
            many_keys = frame([(b"_command", b"Hello")] + [(b"k%d" % i, b"") for i in range(100000)])
            out["pre-auth 100k keys"] = closed_by_peer(host, port, many_keys)
            srv = servers[0]
            out["server pre-auth 100k keys"] = closed_by_peer(srv.addr, srv.port, many_keys)
            # After authentication: more keys than MaxBoxKeys (1.1 MB, under MaxBox) drop the link...
            raw = scheduler_link(hnode)
            try:
                try:
                    raw.send(frame([(b"_command", b"Pulse"), (b"_ask", b"77"), (b"interval", b"1.0")]
                                   + [(b"k%d" % i, b"v") for i in range(100000)]))
                except OSError:
                    pass
                out["post-auth 100k keys dropped"] = raw.read_until_closed(10)
            finally:
                raw.close()
            # ...and so does a box over MaxBox.
            raw = scheduler_link(hnode)
            try:
                piece = struct.pack("!H", 3) + b"key" + struct.pack("!H", 65535) + b"v" * 65535
                try:
                    for _ in range(config.MaxBox // len(piece) + 10):
                        raw.send(piece)
                except OSError:
                    pass
                out["post-auth over MaxBox dropped"] = raw.read_until_closed(10)
            finally:
                raw.close()
            # The node still answers a fresh, correct scheduler link.
            raw = scheduler_link(hnode)
            try:
                out["node answers afterwards"] = b"avail" in raw.call(b"Pulse", interval="1.0")
            finally:
                raw.close()
            return out

        out, _ = await alongside(comp, abuse)
    assert all(out.values()), out
    assert "a box over" in hnode.output()


@pytest_twisted.ensureDeferred
async def test_preauth_box_over_4096_bytes_in_one_read_is_dropped(hnode):
    def abuse():
        raw = RawAMP(*addr_of(hnode))
        try:
            raw.send(box(b"Hello", 1, version=config.ProtocolVersion, role="scheduler", computation="", location="L" * 50000,
                         nonce=auth.new_nonce()))
            try:
                answer = raw.wait(b"1", 5)
            except (ConnectionError, TimeoutError):
                return None
            return answer
        finally:
            raw.close()

    answer = await threads.deferToThread(abuse)
    assert answer is None, "a 50 KB box was dispatched before authentication: %r" % sorted(answer)


@pytest_twisted.ensureDeferred
async def test_box_with_two_million_keys_is_dropped(fresh_node):
    node = fresh_node(cpus=1)
    pid = node.proc.pid

    def abuse():
        import threading

        count = (config.MaxBox - 100) // 9 - 1000  # 9 bytes per empty key: just under MaxBox
        data = frame([(b"_command", b"Pulse"), (b"_ask", b"1"), (b"interval", b"1.0")]
                     + [(b"%04x" % (i % 65536) + bytes([65 + i // 65536]), b"") for i in range(count)])
        raw = scheduler_link(node)
        raw.sock.settimeout(120)
        base = rss(pid)
        peak = [0]
        done = []

        def watch():
            while not done:
                peak[0] = max(peak[0], rss(pid) - base)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            try:
                raw.send(data)
                answered = b"avail" in raw.wait(b"1", 60)
            except (ConnectionError, OSError):
                answered = False
        finally:
            time.sleep(0.3)
            done.append(True)
            watcher.join()
            raw.close()
        return count, answered, peak[0]

    count, answered, peak = await threads.deferToThread(abuse)
    print("one box of %d empty keys (%.1f MiB): answered=%s, node RSS peak +%.0f MiB"
          % (count, count * 9 / MiB, answered, peak / MiB))
    assert not answered and peak < 64 * MiB


# -- unknown and out-of-order commands ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_and_out_of_order_commands(hnode):
    async with Session(hnode) as comp:
        servers = await comp.servers()
        srv = servers[0]

        def abuse():
            host, port = addr_of(hnode)
            key = node_key(hnode)
            out = {}
            # Authenticate before Hello: an AUTH error, then the connection is dropped.
            raw = RawAMP(host, port)
            try:
                r = raw.call(b"Authenticate", proof=b"p" * 32)
                out["Authenticate first -> AUTH"] = r.get(b"_error_code") == b"AUTH"
                out["Authenticate first -> dropped"] = raw.read_until_closed(5)
            finally:
                raw.close()
            # Hello twice: one handshake per connection, the second Hello drops it.
            raw = RawAMP(host, port)
            try:
                raw.call(b"Hello", version=config.ProtocolVersion, role="scheduler", computation="", location="", nonce=auth.new_nonce())
                raw.send(box(b"Hello", 9, version=config.ProtocolVersion, role="scheduler", computation="",
                             location="", nonce=auth.new_nonce()))
                out["Hello twice -> dropped"] = raw.read_until_closed(5)
            finally:
                raw.close()
            raw = RawAMP(host, port)
            try:
                raw.handshake(key, "scheduler")
                # Unknown command after authentication: that call fails, the link stays.
                r = raw.call(b"NoSuchCommand")
                out["unknown -> UNHANDLED"] = r.get(b"_error_code") == b"UNHANDLED"
                out["link still answers"] = b"avail" in raw.call(b"Pulse", interval="1.0")
                # Peer commands on the node link: unhandled, link stays.
                r = raw.call(b"RunTask", function="square", args=b"x")
                out["RunTask on node -> UNHANDLED"] = r.get(b"_error_code") == b"UNHANDLED"
                # Node commands for a computation that is not there: an error for that call.
                r = raw.call(b"CloseServer", computation="nope", index=1, terminate="True", restart="False")
                out["CloseServer unknown computation -> error"] = b"_error" in r
                r = raw.call(b"Release", computation="nope", terminate="True")
                out["Release unknown computation -> no-op"] = b"_answer" in r
                r = raw.call(b"Reserve", computation="other", key=b"k" * 32, cpus=0, components=b"",
                             files=b"", client="127.0.0.1:1")
                out["Reserve while busy -> error"] = r.get(b"_error_code") == b"DISPYCOS"
                # Hello again after authentication: fatal for this link only.
                raw.send(box(b"Hello", 99, version=config.ProtocolVersion, role="scheduler", computation="",
                             location="", nonce=auth.new_nonce()))
                out["Hello after auth -> dropped"] = raw.read_until_closed(5)
            finally:
                raw.close()
            # Reserve on a server port: refused before authentication...
            out["Reserve on server unauthenticated -> dropped"] = closed_by_peer(
                srv.addr, srv.port, box(b"Reserve", 1, computation="x", key=b"k", cpus=0, components=b"",
                                        files=b"", client=""))
            # ...and unhandled after it.
            raw = peer_link(comp, srv)
            try:
                r = raw.call(b"Reserve", computation="x", key=b"k", cpus=0, components=b"", files=b"", client="")
                out["Reserve on server -> UNHANDLED"] = r.get(b"_error_code") == b"UNHANDLED"
                out["server link still answers"] = raw.call(b"Terminate", task=10 ** 9).get(b"_error_code") == b"UNKNOWN_TASK"
            finally:
                raw.close()
            return out

        out, _ = await alongside(comp, abuse)
    assert all(out.values()), out
    assert "authentication failed" in hnode.output()


# -- truncated streams -------------------------------------------------------------------


def partial_files(root):
    found = []
    for dirpath, _, files in os.walk(root):
        found.extend(os.path.join(dirpath, f) for f in files if f.startswith(".dispycos-"))
    return found


def _truncate_streams(node, label, connect, dest, computation, out, prepare=False):
    """Open a file and a blob stream on a fresh link, send part of each, hang up."""
    for purpose in ("file", "blob"):
        raw = connect()
        try:
            if prepare and purpose == "file":  # a node takes files only for a computation this link holds
                r = raw.call(b"Prepare", computation=computation, files=b'[["sub/cut-file.bin", 600000]]')
                assert b"_answer" in r, r
            r = raw.call(b"StreamOpen", purpose=purpose, name="cut-%s.bin" % purpose, dir="sub",
                         dest=dest, size=10 * 60000, sha256=b"\0" * 32, overwrite="True",
                         computation=computation)
            sid = r[b"stream"]
            for i in range(3):
                r = raw.call(b"StreamChunk", stream=sid, offset=i * 60000, data=b"y" * 60000)
                assert b"_answer" in r, r
            if purpose == "file":
                out["%s file: partial file while open" % label] = bool(partial_files(node.dest))
            else:  # a blob is gathered in memory: no file at all
                out["%s blob: no file while open" % label] = not partial_files(node.dest)
        finally:
            raw.close()  # mid-way
        deadline = time.monotonic() + 10
        while partial_files(node.dest) and time.monotonic() < deadline:
            time.sleep(0.05)
        out["%s %s: nothing left after disconnect" % (label, purpose)] = not partial_files(node.dest)


@pytest_twisted.ensureDeferred
async def test_truncated_streams_leave_no_partial_file(hnode):
    out = {}
    # On a node (free: this raw scheduler link holds it for its own computation).
    await threads.deferToThread(_truncate_streams, hnode, "node", lambda: scheduler_link(hnode), "node",
                                "cut-test", out, prepare=True)
    async with Session(hnode) as comp:
        servers = await comp.servers()

        def abuse():
            _truncate_streams(hnode, "server", lambda: peer_link(comp, servers[0]), "server", comp.id, out)
            # A chunk out of place fails that call only, and removes the partial file.
            raw = peer_link(comp, servers[0])
            try:
                sid = raw.call(b"StreamOpen", purpose="file", name="skip.bin", dir="", dest="server", size=120000,
                               sha256=b"\0" * 32, overwrite="True", computation=comp.id)[b"stream"]
                r = raw.call(b"StreamChunk", stream=sid, offset=60000, data=b"z" * 10)
                out["out-of-place chunk -> FILE error"] = r.get(b"_error_code") == b"FILE"
                out["out-of-place chunk -> nothing left"] = not partial_files(hnode.dest)
                r = raw.call(b"StreamOpen", purpose="file", name="../escape.bin", dir="", dest="server", size=1,
                             sha256=b"\0" * 32, overwrite="True", computation=comp.id)
                out["'..' name refused"] = r.get(b"_error_code") == b"FILE"
                out["link still answers"] = raw.call(b"Terminate", task=10 ** 9).get(b"_error_code") == b"UNKNOWN_TASK"
            finally:
                raw.close()
            return out

        out, _ = await alongside(comp, abuse)
    assert all(out.values()), out
    assert not [p for p in partial_files(hnode.dest)]
    assert not [f for d, _, fs in os.walk(hnode.dest) for f in fs if f.startswith(("cut-", "skip", "escape"))]


@pytest_twisted.ensureDeferred
async def test_open_streams_per_connection_are_capped(fresh_node):
    node = fresh_node(cpus=1)

    def abuse():
        proc = psutil.Process(node.proc.pid)
        before = proc.num_fds()
        raw = scheduler_link(node)
        refused = 0
        try:
            for i in range(1000):
                raw.send(box(b"StreamOpen", i + 1, purpose="blob", name="b", dir="", dest="node", size=1,
                             sha256=b"\0" * 32, overwrite="True", computation=""))
            last = raw.wait(b"1000", 30)
            refused = sum(1 for b in parse_boxes(raw.buf) if b.get(b"_error_code") == b"FILE")
            peak = proc.num_fds() - before
        finally:
            raw.close()
        return peak, refused, last

    peak, refused, _ = await threads.deferToThread(abuse)
    print("node file descriptors held by one connection's 1,000 open streams: +%d (refused %d)" % (peak, refused))
    assert peak < 100


# -- messages for unknown tasks -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_messages_for_unknown_tasks(hnode):
    async with Session(hnode) as comp:
        servers = await comp.servers()
        mark = len(hnode.output())

        def abuse():
            out = {}
            raw = peer_link(comp, servers[0])
            try:
                raw.send(box(b"Messages", batch=pack_items([(10 ** 9 + i, pickle.dumps(i)) for i in range(3)])))
                r = raw.call(b"Deliver", task=10 ** 9, message=pickle.dumps("x"))
                out["Deliver -> UNKNOWN_TASK"] = r.get(b"_error_code") == b"UNKNOWN_TASK"
                r = raw.call(b"WaitTask", task=10 ** 9)
                out["WaitTask -> UNKNOWN_TASK"] = r.get(b"_error_code") == b"UNKNOWN_TASK"
                r = raw.call(b"Terminate", task=10 ** 9)
                out["Terminate -> UNKNOWN_TASK"] = r.get(b"_error_code") == b"UNKNOWN_TASK"
                r = raw.call(b"Deliver", task=10 ** 9, message=b"", message_blob=12345)
                out["Deliver of an unknown blob -> error"] = b"_error" in r
                out["link still answers"] = raw.call(b"Terminate", task=10 ** 9 + 1).get(b"_error_code") == b"UNKNOWN_TASK"
                # A malformed batch drops this link only.
                raw.send(box(b"Messages", batch=b"\x00\x01\x02"))
                out["malformed batch -> dropped"] = raw.read_until_closed(5)
            finally:
                raw.close()
            return out

        out, _ = await alongside(comp, abuse)
    assert all(out.values()), out
    await sleep(0.5)
    log = new_log(hnode, mark)
    assert "unknown task(s) dropped (e.g. 1000000000)" in log


@pytest_twisted.ensureDeferred
async def test_messages_for_unknown_tasks_log_one_line_per_batch(hnode):
    async with Session(hnode) as comp:
        servers = await comp.servers()
        mark = len(hnode.output())

        def abuse():
            raw = peer_link(comp, servers[0])
            try:
                raw.send(box(b"Messages", batch=pack_items([(10 ** 9 + i, b"N.") for i in range(10000)])))
                raw.call(b"Terminate", task=10 ** 9)  # ordered after the batch
            finally:
                raw.close()

        await threads.deferToThread(abuse)
        await sleep(1.0)
    lines = [line for line in new_log(hnode, mark).splitlines() if "unknown task(s) dropped" in line]
    assert 1 <= len(lines) <= 10, "%d log lines for one batch" % len(lines)


# -- a peer that stops reading --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_node_link_that_stops_reading_is_dropped_at_the_cap(fresh_node):
    """
    An authenticated scheduler link that never reads its answers: the node
    buffers them up to MaxOutgoingBuffer (256 MiB), then drops that link.
    Measured with 60 KB requests whose error answers echo them (1:1), and
    with Pulse (small answers, the node's CPU is the limit).
    """
    node = fresh_node(cpus=2)
    pid = node.proc.pid

    def flood(command_name, seconds):
        raw = scheduler_link(node)
        raw.sock.settimeout(0.5)
        base = rss(pid)
        peak, sent, dropped = 0, 0, False
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                if command_name == "echo":
                    data = box(b"E" * 60000, sent + 1)
                else:
                    data = b"".join(box(b"Pulse", sent + i + 1, interval="1.0") for i in range(200))
                try:
                    raw.sock.sendall(data)
                    sent += 1 if command_name == "echo" else 200
                except socket.timeout:
                    pass
                except OSError:
                    dropped = True
                    break
                peak = max(peak, rss(pid) - base)
        finally:
            raw.close()
        time.sleep(1.0)
        return {"sent": sent, "peak": peak, "after": rss(pid) - base, "dropped": dropped,
                "seconds": time.monotonic() - started}

    async with Session(node) as comp:
        (echo, pulse), rounds = await alongside(comp, lambda: (flood("echo", 60), flood("pulse", 10)))
    print("slow consumer, 60 KB echoed errors: %d sent in %.1fs, node RSS peak +%.0f MiB, +%.0f MiB after, "
          "dropped=%s" % (echo["sent"], echo["seconds"], echo["peak"] / MiB, echo["after"] / MiB, echo["dropped"]))
    print("slow consumer, Pulse: %d sent in %.1fs, node RSS peak +%.1f MiB (%.2f MiB/s)"
          % (pulse["sent"], pulse["seconds"], pulse["peak"] / MiB, pulse["peak"] / MiB / pulse["seconds"]))
    print("correct computation rounds meanwhile: %d" % rounds)
    assert echo["dropped"], "a link that never reads was not dropped"
    assert echo["peak"] < config.MaxOutgoingBuffer + 128 * MiB
    assert "it does not read" in node.output()


@pytest_twisted.ensureDeferred
async def test_request_arriving_while_a_large_answer_drains_is_answered(hnode):
    """
    Regression test: PeerAMP used to override AMP's pauseProducing/paused
    (twisted.protocols.basic._PauseableMixin), so a request arriving while a
    large answer drained stayed unparsed until the peer sent more bytes
    (found by this suite; fixed in 13d2498 with a separate write watcher).
    """
    async with Session(hnode, [big_later, waiter]) as comp:
        # 14 MiB: more than the kernel's socket buffers take while the client does not read
        big = await comp.run_async(big_later, 8 * MiB, 0.5)
        other = await comp.run_async_at(big.location, waiter)  # the same server
        time.sleep(1.0)  # a busy client: its reactor reads nothing while the 14 MiB result arrives
        try:
            delivered = await other.deliver("hello", timeout=10)
        except dispycos.TimeoutError:
            delivered = None
        assert len(await big.result(timeout=30)) == 8 * MiB
        await other.terminate()
    assert delivered == 1


@pytest_twisted.ensureDeferred
async def test_raw_request_arriving_while_a_large_answer_drains(hnode):
    """The same on a raw peer link: the second request is answered at once."""
    async with Session(hnode, [make_blob]) as comp:
        big = await comp.run(make_blob, 8 * MiB)
        await big.result()
        loc = big.location
        small = await comp.run_at(loc, make_blob, 10)
        await small.result()

        def abuse():
            raw = peer_link(comp, loc)
            try:
                raw.send(box(b"WaitTask", 101, task=big.tid))
                time.sleep(1.0)  # not reading: the 8 MiB answer fills the socket buffers
                raw.send(box(b"WaitTask", 102, task=small.tid))
                raw.wait(b"101", 20)
                try:
                    raw.wait(b"102", 5)
                    return "answered"
                except TimeoutError:
                    raw.send(box(b"WaitTask", 103, task=small.tid))
                    raw.wait(b"102", 10)
                    return "answered only after a later request arrived"
            finally:
                raw.close()

        outcome = await threads.deferToThread(abuse)
    assert outcome == "answered"


@pytest_twisted.ensureDeferred
async def test_server_link_that_stops_reading_is_dropped_at_the_cap(fresh_node):
    """
    A peer of the computation asks a server for an 8 MiB finished result
    again and again (40-byte requests) and never reads: the server buffers
    the answers up to MaxOutgoingBuffer (256 MiB), then drops that link.
    Measured; the other computation traffic goes on.
    """
    node = fresh_node(cpus=2)
    async with Session(node, [make_blob, square, server_pid]) as comp:
        big = await comp.run(make_blob, 8 * MiB)
        await big.result()
        pid = await comp.run_result_at(big.location, server_pid)

        def abuse():
            raw = peer_link(comp, big.location)
            raw.sock.settimeout(0.5)
            base = rss(pid)
            peak, sent, dropped = 0, 0, False
            started = time.monotonic()
            try:
                while time.monotonic() - started < 60 and not dropped:
                    try:
                        raw.sock.sendall(box(b"WaitTask", sent + 1, task=big.tid))
                        sent += 1
                    except socket.timeout:
                        pass
                    except OSError:
                        dropped = True
                    peak = max(peak, rss(pid) - base)
                    time.sleep(0.02)
            finally:
                raw.close()
            time.sleep(1.0)
            return {"sent": sent, "peak": peak, "after": rss(pid) - base, "dropped": dropped,
                    "seconds": time.monotonic() - started}

        out, rounds = await alongside(comp, abuse)
    print("slow consumer on a server link (8 MiB answers to 40-byte WaitTask): %d sent in %.1fs, server RSS "
          "peak +%.0f MiB, +%.0f MiB after, dropped=%s; correct rounds meanwhile %d"
          % (out["sent"], out["seconds"], out["peak"] / MiB, out["after"] / MiB, out["dropped"], rounds))
    assert out["dropped"]
    assert out["peak"] < config.MaxOutgoingBuffer + 128 * MiB
    assert "it does not read" in node.output()


# -- resource growth: mailbox flood and kept results ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mailbox_flood_of_a_million_messages(fresh_node, tmp_path):
    """
    1,000,000 small messages to a remote task that never receives: measure
    the server's memory. The mailbox cap (config.MaxMailbox, 1,000,000 by
    default, a count with no byte budget) refuses the next one.
    """
    node = fresh_node(cpus=1)
    flag = str(tmp_path / "read-now")
    count = 1000000
    async with Session(node, [hoard, square, server_pid]) as comp:
        pid = await comp.run_result(server_pid)
        base = rss(pid)
        rtask = await comp.run_async(hoard, flag, 600)
        started = time.monotonic()
        for start in range(0, count, 20000):
            for i in range(start, start + 20000):
                rtask.send(i)
            await rtask.drain()
        sent_in = time.monotonic() - started
        # an acknowledged message, ordered after them, finds the mailbox full
        with pytest.raises(dispycos.MailboxFull):
            await rtask.deliver("one more", timeout=120)
        filled_in = time.monotonic() - started
        growth = rss(pid) - base
        # the computation still runs tasks meanwhile
        assert await comp.run_results(square, range(5)) == [0, 1, 4, 9, 16]
        open(flag, "w").close()
        held = await rtask.result(timeout=120)
    print("mailbox flood: %d messages sent in %.1fs, all queued after %.1fs; server RSS +%.0f MiB "
          "(%.0f bytes per message); mailbox held %d" % (count, sent_in, filled_in, growth / MiB, growth / count, held))
    assert held == count == config.MaxMailbox


@pytest_twisted.ensureDeferred
async def test_a_send_loop_lets_the_reactor_run_between_drains(fresh_node, tmp_path):
    """
    A producer looping over send() and drain() in the reactor thread, from
    its first message on (the connection to the server is not up yet): each
    drain() waits for the connection and gives the reactor a turn, so its
    timers run meanwhile and none (the connection's own timeout, a
    heartbeat's silence) finds itself overdue at the end.
    """
    node = fresh_node(cpus=1)
    flag = str(tmp_path / "read-now")
    ticks = []
    async with Session(node, [hoard]) as comp:
        rtask = await comp.run_async(hoard, flag, 600)
        loop = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.start(0.05)
        rounds = 0
        for start in range(0, 300000, 20000):
            for i in range(start, start + 20000):
                rtask.send(i)
            await rtask.drain()
            rounds += 1
        during = len(ticks)
        loop.stop()
        assert await rtask.deliver("one more", timeout=120) == 1
        open(flag, "w").close()
        held = await rtask.result(timeout=120)
    print("send loop: %d rounds of 20,000 messages, %d timer ticks ran meanwhile" % (rounds, during))
    assert held == 300001
    assert during > 1  # the first tick runs at start(); any other ran between rounds


@pytest_twisted.ensureDeferred
async def test_delivered_results_are_not_kept_in_server_memory(fresh_node):
    node = fresh_node(cpus=1)
    async with Session(node, [make_blob, server_pid]) as comp:
        pid = await comp.run_result(server_pid)
        warm = await comp.run(make_blob, 8 * MiB)  # warm up buffers of that size once
        await warm.result()
        await sleep(0.5)
        base = rss(pid)
        for _ in range(20):
            assert len(await comp.run_result(make_blob, 8 * MiB)) == 8 * MiB
        await sleep(1.0)
        growth = rss(pid) - base
    print("server RSS after 20 delivered 8 MiB results: +%.0f MiB" % (growth / MiB))
    assert growth < 64 * MiB


@pytest_twisted.ensureDeferred
async def test_mailbox_holds_large_messages_without_a_byte_budget(fresh_node, tmp_path):
    """
    Measured, not asserted as a bug: the mailbox cap counts messages, not
    bytes, so 400 messages of 256 KiB (far under the 1,000,000 cap) all queue.
    """
    node = fresh_node(cpus=1)
    flag = str(tmp_path / "read-now")
    async with Session(node, [hoard, square, server_pid]) as comp:
        pid = await comp.run_result(server_pid)
        base = rss(pid)
        rtask = await comp.run_async(hoard, flag, 600)
        blob = os.urandom(256 * 1024)
        for i in range(400):
            rtask.send(blob)
            if i % 20 == 19:
                await rtask.drain()
        assert await rtask.deliver("last", timeout=60) == 1
        growth = rss(pid) - base
        assert await comp.run_results(square, range(5)) == [0, 1, 4, 9, 16]
        open(flag, "w").close()
        held = await rtask.result(timeout=60)
    print("mailbox of 400 x 256 KiB messages: server RSS +%.0f MiB, held %d messages" % (growth / MiB, held))
    assert held == 401


# -- payloads the server cannot load ---------------------------------------------------------


def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


def keeper(task=None):
    got = []
    while True:
        msg = yield task.receive(timeout=30)
        if msg == "stop":
            return got
        got.append(msg)


def client_only_module(tmp_path, name):
    """A module this process imports and the servers cannot (not on their path)."""
    import importlib
    import sys

    (tmp_path / (name + ".py")).write_text("VALUE = 5\n\nclass Thing:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_unloadable_function_fails_that_call_only(hnode, tmp_path):
    mod = client_only_module(tmp_path, "dispycos_client_only_fn")
    ns = {"dispycos_client_only_fn": mod}
    exec("def uses_it(x):\n    return dispycos_client_only_fn.VALUE + x\n", ns)
    async with Session(hnode, [slow]) as comp:
        bystander = await comp.run_async(slow, 3)
        with pytest.raises(dispycos.DispycosError) as info:
            rt = await comp.run_async_at(bystander.location, ns["uses_it"], 1)
            await rt.result(timeout=10)
        assert "dispycos_client_only_fn" in str(info.value)
        assert await bystander.result(timeout=10) == 3


@pytest_twisted.ensureDeferred
async def test_unloadable_delivered_message_fails_that_call_only(hnode, tmp_path):
    mod = client_only_module(tmp_path, "dispycos_client_only_msg")
    async with Session(hnode, [slow, keeper]) as comp:
        bystander = await comp.run_async(slow, 3)
        target = await comp.run_async_at(bystander.location, keeper)
        with pytest.raises(dispycos.DispycosError):
            await target.deliver(mod.Thing(), timeout=10)
        assert await target.deliver("ok", timeout=10) == 1
        target.send("stop")
        assert await target.result(timeout=10) == ["ok"]
        assert await bystander.result(timeout=10) == 3
