"""
Multi-host test in network namespaces made by the test itself: nodes on two
"hosts", client and private scheduler on a third find them by UDP broadcast
(the hosts' /24 broadcast address, inside the namespaces), spread tasks over both; cutting one node's
link mid-task gives the abandoned statuses and errbacks while the other node
keeps working. Skipped where namespaces cannot be made (not root, no iproute2).

Nothing here leaves the namespaces: the hosts have no default route and the
root namespace gets no link, address or route.
"""

import json
import os
import secrets
import signal
import subprocess
import tempfile
import time

import pytest

from .conftest import env_for_children, stop_node_process
from .netns import Hosts, sh

@pytest.fixture(scope="module")
def namespaces():
    with Hosts("dsp", 3) as h:
        yield h


class NsNode:
    def __init__(self, hosts, i, secret):
        self.dest = tempfile.mkdtemp(prefix="dispycos-netns-")
        ready = os.path.join(self.dest, "ready")
        self.log = open(os.path.join(self.dest, "log"), "wb")
        cmd = hosts.python(i, "-m", "dispycos.scripts", "-c", "1", "-i", hosts.addr(i), "-s", secret, "--tcp_ports", "0",
                           "--dest_path", self.dest, "--ready_file", ready, "--daemon")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env_for_children(),
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("node %d did not start" % i)
            time.sleep(0.05)

    def stop(self):
        stop_node_process(self.proc, self.log, self.dest, grace=10)


CLIENT = r'''
import json, sys, time
from twisted.internet import task, defer
from twisted.logger import globalLogBeginner, textFileLogObserver
import dispycos
from dispycos import Status

def compute(n, task=None):
    yield task.sleep(0.2)
    return n, task.location.addr

def sleeper(seconds, task=None):
    yield task.sleep(seconds)
    return seconds

def count_messages(n, task=None):
    got = []
    for _ in range(n):
        got.append((yield task.receive(timeout=30)))
    return got == list(range(n))

def say(*args):
    print(json.dumps(args), flush=True)

async def pause(reactor, s):
    await task.deferLater(reactor, s, lambda: None)

async def main(reactor):
    secret, my_addr = sys.argv[1], sys.argv[2]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    statuses = []
    dispycos.Scheduler(secret=secret, ip_addr=my_addr)   # no nodes listed: UDP broadcast finds them
    comp = dispycos.Computation([compute, sleeper], pulse_interval=1, status_task=statuses.append)
    await comp.schedule(timeout=60)
    for _ in range(300):
        nodes = await comp.nodes()
        if len(nodes) == 2:
            break
        await pause(reactor, 0.1)
    say("NODES", nodes)
    results = await comp.run_results(compute, range(12))
    say("SPREAD", sorted({addr for _, addr in results}), [n for n, _ in results])
    long = {}
    for addr in nodes:
        long[addr] = await comp.run_async_at(addr, sleeper, 600)
    say("CUT", sorted(long))
    victim = sys.stdin.readline().strip()
    started = time.monotonic()
    try:
        await long[victim].result(timeout=60)
        say("NOT_ABANDONED")
    except dispycos.TaskAbandoned:
        say("ABANDONED", victim, time.monotonic() - started)
    survivor = [a for a in nodes if a != victim][0]
    say("SURVIVOR", await comp.run_result_at(survivor, compute, 7))
    # acknowledged messages to a task on the healthy node while the other is cut
    counter = await comp.run_async_at(survivor, count_messages, 200)
    for i in range(200):
        await counter.deliver(i, timeout=10)
    say("ACKED", await counter.result(timeout=30))
    codes = [s.status.name for s in statuses if isinstance(s, dispycos.DispycosStatus)]
    say("STATUS", codes.count("NodeAbandoned"), codes.count("ServerAbandoned"))
    await comp.close(terminate=True)
    say("CLOSED")
    sys.stdin.readline()  # the link is back
    comp = dispycos.Computation([compute], pulse_interval=1)
    await comp.schedule(timeout=60)
    for _ in range(600):
        nodes = await comp.nodes()
        if len(nodes) == 2:
            break
        await pause(reactor, 0.1)
    results = await comp.run_results(compute, range(8))
    say("AGAIN", sorted(nodes), sorted({addr for _, addr in results}))
    await comp.close()
    say("DONE")

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


def read_json_line(proc, deadline):
    """
    The client's next JSON line; its log (C{proc.log_path}) in the error when
    there is none in time. Reads the pipe itself (C{os.read}): lines that
    arrived together must not wait in a file object's buffer, where
    C{select} cannot see them.
    """
    import select

    def log():
        with open(proc.log_path) as f:
            return f.read()[-4000:]

    fd = proc.stdout.fileno()
    pending = proc.__dict__.setdefault("pending", bytearray())
    while True:
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            try:
                return json.loads(line)
            except ValueError:
                continue
        if time.monotonic() >= deadline:
            raise AssertionError("no answer from the client in time; its log:\n%s" % log())
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError("client exited: %s" % log())
            pending += data


def test_multi_host_discovery_spread_cut_and_restored_link(namespaces, tmp_path):
    secret = secrets.token_hex(8)
    hosts = namespaces
    nodes = [NsNode(hosts, 1, secret), NsNode(hosts, 2, secret)]
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    log_path = tmp_path / "client.log"
    with open(log_path, "w") as log:
        client = subprocess.Popen(hosts.python(3, str(script), secret, hosts.addr(3)),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                  env=env_for_children(tmp_path), start_new_session=True)
    client.log_path = log_path
    try:
        deadline = time.monotonic() + 120
        tag, found = read_json_line(client, deadline)
        assert tag == "NODES" and sorted(found) == [hosts.addr(1), hosts.addr(2)]
        tag, spread, order = read_json_line(client, deadline)
        assert spread == [hosts.addr(1), hosts.addr(2)] and order == list(range(12))
        tag, _ = read_json_line(client, deadline)
        assert tag == "CUT"
        sh("ip", "-n", hosts.name(2), "link", "set", "veth0", "down")  # pull the cable of host 2
        client.stdin.write(hosts.addr(2) + "\n")
        client.stdin.flush()
        tag, victim, elapsed = read_json_line(client, deadline)
        assert tag == "ABANDONED" and victim == hosts.addr(2)
        assert elapsed < 30  # 5 missed pulses of 1 s, generously bounded
        tag, (n, addr) = read_json_line(client, deadline)
        assert tag == "SURVIVOR" and n == 7 and addr == hosts.addr(1)
        assert read_json_line(client, deadline) == ["ACKED", True]  # nothing acknowledged was lost
        tag, node_abandoned, server_abandoned = read_json_line(client, deadline)
        assert (node_abandoned, server_abandoned) == (1, 1)
        assert read_json_line(client, deadline) == ["CLOSED"]
        sh("ip", "-n", hosts.name(2), "link", "set", "veth0", "up")  # the link returns
        client.stdin.write("\n")
        client.stdin.flush()
        tag, found, used = read_json_line(client, deadline)
        assert tag == "AGAIN" and found == [hosts.addr(1), hosts.addr(2)] and used == found  # rediscovered, serving
        assert read_json_line(client, deadline) == ["DONE"]
        client.wait(30)
        assert client.returncode == 0
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        for n in nodes:
            n.stop()
