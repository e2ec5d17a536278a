"""
Nothing from an unauthenticated peer is ever unpickled: raw connections to a
real node and to its servers send pickles (that would create a marker file if
unpickled) before authenticating, and the node keeps serving a correct client.
"""

import os
import pickle
import socket
import time

import pytest_twisted
from twisted.protocols import amp

from dispycos import Computation, Scheduler
from dispycos.protocol.arguments import pack_items


class Marker:
    """Unpickling this creates the file at `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def box(command, ask=None, **values):
    b = amp.AmpBox()
    b[b"_command"] = command
    if ask is not None:
        b[b"_ask"] = str(ask).encode()
    for k, v in values.items():
        b[k.encode()] = v if isinstance(v, bytes) else str(v).encode()
    return b.serialize()


def hostile_boxes(marker):
    payload = pickle.dumps(Marker(marker))
    args = pickle.dumps(((Marker(marker),), {}))
    return [
        box(b"RunTask", 1, function="", code=payload, args=args),
        box(b"Messages", batch=pack_items([(1, payload), (2, payload)])),
        box(b"Deliver", 2, task=1, message=payload),
        box(b"TaskEnded", batch=pack_items([(1, payload)])),
        box(b"WaitTask", 3, task=1),
        box(b"Reserve", 4, computation="x", key=b"k" * 32, cpus=0, components=payload, files=payload, client="127.0.0.1:1"),
        box(b"Init", 5, computation="x", key=b"k", components=payload, node_dir="/tmp", server_dir="/tmp", location="x:1"),
        # a handshake with a bogus proof, then more pickles
        box(b"Hello", 6, version=1, role="scheduler", computation="", location="", nonce=b"n" * 32),
        box(b"Authenticate", 7, proof=b"p" * 32),
        box(b"RunTask", 8, function="", code=payload, args=args),
    ]


def send_raw(host, port, data, read_for=1.0):
    """Send raw bytes; return what came back before the peer closed (bounded)."""
    s = socket.create_connection((host, port), timeout=5)
    got = b""
    try:
        s.sendall(data)
        s.settimeout(0.2)
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    return got


def double(x):
    return 2 * x


@pytest_twisted.ensureDeferred
async def test_no_unpickling_before_authentication(node, tmp_path):
    marker = str(tmp_path / "unpickled")
    host, port = node.location.rsplit(":", 1)
    # Get the servers' ports from a real (authenticated) computation.
    scheduler = Scheduler(nodes=[node.location], secret=node.secret)
    comp = Computation([double])
    try:
        await comp.schedule(timeout=30)
        servers = await comp.servers()
        targets = [(host, int(port))] + [(s.addr, s.port) for s in servers]
        for target in targets:
            for b in hostile_boxes(marker):
                send_raw(target[0], target[1], b, read_for=0.3)
            send_raw(target[0], target[1], b"".join(hostile_boxes(marker)), read_for=0.5)
        assert not os.path.exists(marker), "an unauthenticated peer got something unpickled"
        # The running computation is unharmed...
        assert await comp.run_results(double, range(10)) == [2 * i for i in range(10)]
    finally:
        await comp.close()
        await scheduler.close()
    # ...and the node serves the next computation.
    scheduler = Scheduler(nodes=[node.location], secret=node.secret)
    comp = Computation([double])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_result(double, 21) == 42
    finally:
        await comp.close()
        await scheduler.close()
    assert not os.path.exists(marker)
    assert "refused command" in node.output()


def test_marker_pickle_works(tmp_path):
    """The marker really would be created by unpickling (the test above can fail)."""
    marker = str(tmp_path / "m")
    pickle.loads(pickle.dumps(Marker(marker)))
    assert os.path.exists(marker)
