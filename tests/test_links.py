"""
The links of a cluster against a sniffer and a man in the middle (SPEC 6.4
"Links", issue 12 item 1), on hosts in network namespaces the test makes:
host 1 runs the client and its scheduler, host 2 a node, host 3 the
attacker, and the switch between them a packet recorder.

* A recorder on the switch sees every frame: of a computation that ran, it
  finds no command, no key, no code, no argument and no result (a plaintext
  control message sent beside it is found, so the recorder works).
* A relay on host 3 that passes bytes on (the node's location given as the
  relay's) serves: TLS runs end to end through it, and it saw ciphertext.
* A man in the middle on host 3 that ends TLS on both sides (it needs no
  certificate: nobody's is checked) reads the handshake, but the proofs are
  bound to each TLS session: the scheduler refuses the node's proof, no
  Reserve ever passes, and nothing runs.
* Plaintext from another host is dropped at once, before any box is read.
"""

import json
import secrets
import subprocess
import sys
import time

import pytest

from .conftest import NodeProcess, env_for_children
from .netns import Hosts

#: What the computation carries: none of it may be seen on the wire.
MARKER = "zq-%s" % secrets.token_hex(6)

CLIENT = r'''
import json, sys
from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver
import dispycos

def zq_marked_function(arg):
    return "result-of-" + arg

async def main(reactor):
    node, my_addr, marker, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    dispycos.Scheduler(nodes=[node], ip_addr=my_addr, discover=False)
    comp = dispycos.Computation([zq_marked_function])
    out = {}
    try:
        await comp.schedule(timeout=timeout)
        out["result"] = await comp.run_result(zq_marked_function, "argument-" + marker)
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        try:
            await comp.close(terminate=True)
        except Exception:
            pass
    print(json.dumps(out), flush=True)

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''

SNIFFER = r'''
import os, socket, sys, time
out, stop, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # every frame, every interface
s.settimeout(0.2)
deadline = time.monotonic() + limit
with open(out, "wb") as f:
    print("ready", flush=True)
    while time.monotonic() < deadline and not os.path.exists(stop):
        try:
            f.write(s.recv(1 << 18))
        except socket.timeout:
            pass
'''

#: A relay from host 3 to the node: bytes passed on ("relay"), or TLS ended
#: on both sides and the plaintext passed on ("tls"). It records what it read.
PROXY = r'''
import datetime, os, select, socket, ssl, sys, tempfile, threading, time
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

listen_host, target_host, target_port, mode, record, limit = sys.argv[1:7]
deadline = time.monotonic() + float(limit)

def certificate(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dispycos")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = os.path.join(directory, "mitm.pem")
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path

if mode == "tls":
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:  # read at once: nothing left behind
        server_ctx.load_cert_chain(certificate(directory))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

lock = threading.Lock()
log = open(record, "wb")

def pump(a, b):
    """Both directions in one thread: an SSL socket is never used by two threads at once."""
    peer = {a: b, b: a}
    for s in (a, b):
        s.settimeout(0.5)
    open_ = True
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select([a, b], [], [], 0.5)
        for s in ready + [s for s in (a, b) if getattr(s, "pending", lambda: 0)()]:
            try:
                data = s.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                data = b""
            if not data:
                open_ = False
                break
            with lock:
                log.write(data)
                log.flush()
            try:
                peer[s].sendall(data)
            except OSError:
                open_ = False
                break
    for s in (a, b):
        try:
            s.close()
        except OSError:
            pass

listener = socket.create_server((listen_host, 0))
listener.settimeout(0.5)
print(listener.getsockname()[1], flush=True)
while time.monotonic() < deadline:
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        continue
    try:
        upstream = socket.create_connection((target_host, int(target_port)), timeout=5)
        if mode == "tls":
            conn.settimeout(5)
            conn = server_ctx.wrap_socket(conn, server_side=True)
            upstream = client_ctx.wrap_socket(upstream)
    except (OSError, ssl.SSLError) as e:
        print("relay failed: %r" % (e,), file=sys.stderr, flush=True)
        conn.close()
        continue
    threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
'''


@pytest.fixture(scope="module")
def hosts():
    with Hosts("dl", 3) as h:
        yield h


@pytest.fixture(scope="module")
def node(hosts):
    n = NodeProcess(cpus=1, host=hosts.addr(2), command=hosts.python(2, "-m", "dispycos.scripts"))
    yield n
    n.stop()


def run_client(hosts, node_location, secret, timeout=30):
    """The client on host 1, with the secret in its environment: what it printed (JSON) and its log."""
    env = dict(env_for_children(), DISPYCOS_SECRET=secret)
    out = subprocess.run(hosts.python(1, "-c", CLIENT, node_location, hosts.addr(1), MARKER, str(timeout)),
                         capture_output=True, text=True, timeout=timeout + 90, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1]), out.stderr


class Background:
    """A helper program on a namespaced host, stopped by its PID."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env_for_children(), start_new_session=True)

    def first_line(self, timeout=20):
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no line from %s" % (self.proc.args,)
        return self.proc.stdout.readline().strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def forbidden_in(data):
    """What of the computation a recording shows (AMP command names, the marker, the code's name)."""
    needles = [MARKER.encode(), b"zq_marked_function", b"_command", b"Reserve", b"RunTask", b"result-of-"]
    return [n for n in needles if n in data]


def send_control(hosts, text):
    """A plaintext message from host 1 to host 3, which the recorder must see."""
    listener = Background(hosts.python(3, "-c", (
        "import socket, sys\n"
        "s = socket.create_server((sys.argv[1], 0)); s.settimeout(20)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "c, _ = s.accept(); c.settimeout(20); c.recv(100)\n"), hosts.addr(3)))
    try:
        port = listener.first_line()
        subprocess.run(hosts.python(1, "-c", (
            "import socket, sys\n"
            "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)\n"
            "c.sendall(sys.argv[3].encode()); c.close()\n"), hosts.addr(3), port, text),
            check=True, timeout=60, env=env_for_children())
        listener.proc.wait(30)
    finally:
        listener.stop()


def test_a_recorder_on_the_switch_learns_nothing_of_a_computation(hosts, node, tmp_path):
    record, stop = tmp_path / "frames", tmp_path / "stop"
    sniffer = Background(["ip", "netns", "exec", hosts.switch, sys.executable, "-c", SNIFFER, str(record),
                          str(stop), "240"])
    try:
        assert sniffer.first_line() == "ready"
        control = "control-%s" % secrets.token_hex(6)
        send_control(hosts, control)
        out, log = run_client(hosts, node.location, node.secret)
        time.sleep(0.5)
    finally:
        stop.write_text("")
        sniffer.proc.wait(30)
        sniffer.stop()
    assert out == {"result": "result-of-argument-" + MARKER}, log[-3000:]
    frames = record.read_bytes()
    assert control.encode() in frames  # the recorder sees payloads...
    assert frames.count(b"\x16\x03\x01") + frames.count(b"\x16\x03\x03") >= 2  # ...and TLS records
    assert forbidden_in(frames) == []


def test_a_relay_passes_tls_end_to_end_and_sees_only_ciphertext(hosts, node, tmp_path):
    record = tmp_path / "relayed"
    host, port = node.location.rsplit(":", 1)
    relay = Background(hosts.python(3, "-c", PROXY, hosts.addr(3), host, port, "relay", str(record), "240"))
    try:
        relay_port = relay.first_line()
        out, log = run_client(hosts, "%s:%s" % (hosts.addr(3), relay_port), node.secret)
    finally:
        relay.stop()
    assert out == {"result": "result-of-argument-" + MARKER}, log[-3000:]
    seen = record.read_bytes()
    assert seen[:1] == b"\x16" and len(seen) > 1000
    assert forbidden_in(seen) == [] and b"Hello" not in seen


def test_a_man_in_the_middle_ending_tls_gets_no_command_through(hosts, node, tmp_path):
    record = tmp_path / "decrypted"
    host, port = node.location.rsplit(":", 1)
    mitm = Background(hosts.python(3, "-c", PROXY, hosts.addr(3), host, port, "tls", str(record), "240"))
    mark = len(node.output())
    try:
        mitm_port = mitm.first_line()
        out, log = run_client(hosts, "%s:%s" % (hosts.addr(3), mitm_port), node.secret, timeout=15)
    finally:
        mitm.stop()
    seen = record.read_bytes()
    assert b"Hello" in seen and b"proof" in seen  # it was in the middle, reading the handshake
    assert b"Reserve" not in seen and b"Authenticate" not in seen  # and no further
    assert forbidden_in(seen) == [b"_command"], forbidden_in(seen)
    assert "error" in out, out
    assert "could not prove the secret" in log
    assert "zq_marked_function" not in node.output()[mark:]
    # the same client, straight to the node, serves
    out, log = run_client(hosts, node.location, node.secret)
    assert out == {"result": "result-of-argument-" + MARKER}, log[-3000:]


def test_plaintext_from_another_host_is_dropped_unread(hosts, node):
    host, port = node.location.rsplit(":", 1)
    mark = len(node.output())
    probe = subprocess.run(hosts.python(3, "-c", (
        "import socket, struct, sys, time\n"
        "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
        "def kv(k, v): return struct.pack('!H', len(k)) + k + struct.pack('!H', len(v)) + v\n"
        "c.sendall(kv(b'_command', b'Hello') + kv(b'_ask', b'1') + b'\\0\\0')\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    got = repr(c.recv(100))\n"
        "except ConnectionResetError:\n"
        "    got = 'reset'\n"
        "print(got, round(time.monotonic() - started, 2))\n"), host, port),
        capture_output=True, text=True, timeout=60, env=env_for_children())
    got, took = probe.stdout.split()
    assert got in ("b''", "reset") and float(took) < 2, probe.stdout + probe.stderr
    for _ in range(50):
        if "plaintext from off this host" in node.output()[mark:]:
            break
        time.sleep(0.1)
    assert "plaintext from off this host" in node.output()[mark:]


def test_a_wrong_secret_over_tls_is_refused_and_the_right_one_serves(hosts, node):
    out, log = run_client(hosts, node.location, "not-" + node.secret, timeout=10)
    assert "error" in out, out
    assert "wrong secret" in log or "could not prove" in log
