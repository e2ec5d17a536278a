"""
Who may connect, with real processes (SPEC 6.4 "No secret", "Shared
scheduler", "Limits"; issue 12 items 2, 5 and 6):

* without a secret a node makes one for its user: that user's clients find
  it and serve, user nobody (and the old public "empty secret" key) cannot;
* a node given two addresses has its servers on those two, on no other;
* a client of a shared scheduler that knows the clients' secret cannot pose
  as a node when nodes have a secret of their own;
* idle connections by the dozen do not lock out the scheduler, and go soon;
* TaskDone from a client speaks only for its own active computation.
"""

import json
import os
import socket
import stat
import threading
import time

import psutil
import pytest
import pytest_twisted

from dispycos import Computation, Scheduler, paths
from dispycos.protocol.discovery import encode
from dispycos.protocol import auth
from dispycos.protocol.arguments import pack_items

from .conftest import Session, run_as_nobody
from .test_hostile import RawAMP, addr_of
from .test_shared import SchedulerProcess


def square(x):
    return x * x


# -- no secret: this user only ----------------------------------------------------------

NOBODY_CLIENT = r'''
import json, os, sys
out = {}
try:
    open(sys.argv[2]).read()
    out["read the secret"] = True
except OSError as e:
    out["read the secret"] = type(e).__name__
from twisted.internet import defer, task
import dispycos

def square(x):
    return x * x

async def main(reactor):
    dispycos.Scheduler(nodes=[sys.argv[1]], discover=False)
    comp = dispycos.Computation([square])
    try:
        await comp.schedule(timeout=15)
        out["ran"] = await comp.run_result(square, 7)
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


@pytest_twisted.ensureDeferred
async def test_a_node_without_a_secret_serves_its_own_user_only(fresh_node, shared_tmp):
    node = fresh_node(cpus=1, secret="")
    path = paths.user_secret_path()
    st, dst = os.stat(path), os.stat(os.path.dirname(path))
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(dst.st_mode) == 0o700
    assert st.st_uid == os.geteuid() and len(paths.user_secret()) == 64
    # this user's client, given no secret, reads the same one and serves
    async with Session(node, [square]) as comp:
        assert await comp.run_result(square, 6) == 36
    # the public key of "no secret" that the first edition used opens nothing
    raw = RawAMP(*addr_of(node))
    try:
        with pytest.raises(AssertionError):
            raw.handshake(auth.key_from_secret(""), "scheduler")
    finally:
        raw.close()
    # user nobody can neither read the secret nor connect with one of its own
    home = os.path.join(shared_tmp, "nobody-home")
    r = run_as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o700)", home)
    assert r.returncode == 0, r.stderr
    r = run_as_nobody(NOBODY_CLIENT, node.location, path, timeout=120,
                      env={"HOME": home, "TMPDIR": shared_tmp})
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert lines, r.stderr[-3000:]
    out = json.loads(lines[-1])
    assert out["read the secret"] == "PermissionError"
    assert "ran" not in out and "refused" in out["error"], out
    assert os.path.exists(os.path.join(home, ".dispycos", "secret"))  # it made its own, to no avail


# -- servers listen where their node does ---------------------------------------------


def listening_addresses(pid):
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest_twisted.ensureDeferred
async def test_servers_listen_only_on_the_addresses_of_their_node(fresh_node):
    node = fresh_node(cpus=2, args=["-i", "127.0.0.2"])
    pids = node.server_pids()
    assert len(pids) == 2
    assert listening_addresses(node.proc.pid) == {"127.0.0.1", "127.0.0.2"}
    for pid in pids:
        assert listening_addresses(pid) == {"127.0.0.1", "127.0.0.2"}
    # a scheduler reaching the node on either address is served there
    for addr in ("127.0.0.1", "127.0.0.2"):
        scheduler = Scheduler(nodes=["%s:%d" % (addr, node.port)], secret=node.secret, discover=False)
        comp = Computation([square])
        try:
            await comp.schedule(timeout=30)
            servers = [str(s) for s in await comp.servers()]
            assert len(servers) == 2 and all(s.startswith(addr + ":") for s in servers), servers
            assert await comp.run_results(square, range(4)) == [0, 1, 4, 9]
        finally:
            await comp.close()
            await scheduler.close()


# -- a client posing as a node -----------------------------------------------------------


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FakeNode:
    """A TCP listener posing as a node: it counts who connects and what they first say."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.heard = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(2)
            try:
                self.heard.append(conn.recv(4096))
            except OSError:
                self.heard.append(b"")
            conn.close()

    def stop(self):
        self._stop.set()
        self.thread.join(10)
        self.sock.close()


def announce(key, port, udp_port):
    packet = encode(key, {"kind": "announce", "role": "node", "name": "fake", "host": "127.0.0.1", "port": port})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(packet, ("127.0.0.1", udp_port))
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_a_client_cannot_pose_as_a_node_of_a_shared_scheduler(fresh_node, tmp_path):
    from .test_core import sleep

    client_secret, node_secret = "clients-secret", "nodes-only-secret"
    node = fresh_node(cpus=1, secret=node_secret)
    secret_file = tmp_path / "node-secret"
    secret_file.write_text(node_secret + "\n")
    secret_file.chmod(0o600)
    udp_port = free_udp_port()
    sched = SchedulerProcess([node.location], client_secret,
                             args=["--node_secret_file", str(secret_file), "-u", str(udp_port)])
    fake = FakeNode()
    try:
        # What a client can sign: the clients' key, and a node key made from the clients' secret.
        for key in (auth.key_from_secret(client_secret, auth.CLIENT), auth.key_from_secret(client_secret, auth.NODE)):
            announce(key, fake.port, udp_port)
        await sleep(3)
        assert fake.heard == []  # the scheduler never came
        # the clients of the scheduler are served by the real node
        comp = Computation([square], secret=client_secret)
        await comp.schedule(sched.location, timeout=30)
        try:
            assert await comp.run_result(square, 9) == 81
        finally:
            await comp.close()
        # control: an announcement signed with the nodes' key is followed (so the above means something)
        announce(auth.key_from_secret(node_secret, auth.NODE), fake.port, udp_port)
        for _ in range(100):
            if fake.heard:
                break
            await sleep(0.1)
        assert fake.heard and b"Hello" in fake.heard[0] and b"Reserve" not in fake.heard[0]
    finally:
        fake.stop()
        sched.stop()


# -- idle connections --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_idle_connections_cannot_lock_out_the_scheduler(fresh_node):
    from dispycos import config

    node = fresh_node(cpus=1)
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(3 * config.MaxPendingPerAddress)]
    try:
        async with Session(node, [square]) as comp:
            assert await comp.run_result(square, 5) == 25

        def all_closed():
            closed = 0
            deadline = time.monotonic() + config.HelloTimeout + 10
            for s in idle:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    closed += s.recv(1) == b""
                except OSError:
                    closed += 1
            return closed

        from twisted.internet import threads

        assert await threads.deferToThread(all_closed) == len(idle)  # silent ones go within HelloTimeout
    finally:
        for s in idle:
            s.close()
    out = node.output()
    assert "unauthenticated connections from its address" in out and "no Hello within" in out


# -- TaskDone speaks for the client's own computation ----------------------------------------------


class _Scheduler:
    def __init__(self, entry):
        from dispycos import metrics

        self.active = None
        self.entry = entry
        self.done = []
        self.runtime = type("Runtime", (), {"counts": metrics.Counts()})()

    def entry_at(self, location):
        return self.entry if str(location) == "127.0.0.1:7000" else None

    def task_done(self, entry, cpu):
        entry.tasks -= 1
        self.done.append((entry, cpu))


class _Entry:
    tasks = 1


def test_task_done_counts_only_for_the_clients_active_computation():
    from twisted.internet.task import Clock

    from dispycos.scheduler.shared import ClientChannel

    class Service:
        reactor = Clock()
        max_file_size = 0
        dest_path = "/nonexistent"

        def keyring(self, role, computation):
            return None

    svc = Service()
    entry = _Entry()
    svc.scheduler = _Scheduler(entry)
    mine, other = ClientChannel(svc), ClientChannel(svc)
    mine.computations["a"] = comp_a = object()
    other.computations["b"] = object()
    svc.scheduler.active = comp_a
    batch = pack_items([(1, b"127.0.0.1:7000")])
    other._task_done(batch)  # not its computation: ignored
    assert svc.scheduler.done == []
    mine._task_done(batch)
    assert svc.scheduler.done == [(entry, True)]
    mine._task_done(batch)  # no task placed there any more: nothing to count
    assert svc.scheduler.done == [(entry, True)] and entry.tasks == 0
