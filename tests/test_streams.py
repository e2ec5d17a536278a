"""
Data movement with real processes: files both ways (chunked, checked,
atomic), payloads over the inline cap as streams, refusals that leave nothing
on disk, interrupted transfers, and high-rate ordered messages.
"""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time

import psutil
import pytest
import pytest_twisted

import dispycos

from .conftest import Session, env_for_children
from .test_core import sleep


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return sha(path)




def file_task(name, back_size, task=None):
    """Check the file the client sent, make one and send it back."""
    import hashlib

    h = hashlib.sha256()
    with open(name, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    out = "back-" + name
    with open(out, "wb") as f:
        f.write(os.urandom(back_size))
    h2 = hashlib.sha256(open(out, "rb").read()).hexdigest()
    path = yield task.send_file(out)
    os.unlink(out)
    return h.hexdigest(), os.path.abspath(name), path, h2


def length(blob):
    return len(blob)


def echo(blob):
    return blob


def collect(n, task=None):
    got = []
    for _ in range(n):
        got.append((yield task.receive(timeout=60)))
    return got


def read_in_node_dir(name, task=None):
    yield task.sleep(0)
    with open(os.path.join("..", name), "rb") as f:
        return len(f.read())


@pytest_twisted.ensureDeferred
async def test_big_file_to_server_and_file_back(node, tmp_path):
    src = tmp_path / "big.bin"
    digest = write_random(str(src), 64 * 1024 * 1024)
    async with Session(node, [file_task], dest_path=str(tmp_path / "back")) as comp:
        server = (await comp.servers())[0]
        landed = await comp.send_file(server, str(src))
        assert os.path.basename(landed) == "big.bin" and "server-" in landed
        remote_sha, remote_path, back_path, back_sha = await comp.run_result_at(server, file_task, "big.bin",
                                                                                5 * 1024 * 1024)
        assert remote_sha == digest and remote_path == landed
        assert back_path.startswith(comp.dest_path) and os.path.getsize(back_path) == 5 * 1024 * 1024
        assert sha(back_path) == back_sha
        # to the node directory (".." of every server), in a sub-directory
        small = tmp_path / "small.txt"
        small.write_bytes(b"x" * 1000)
        node_path = await comp.send_file("127.0.0.1", str(small), dir="sub")
        assert node_path.endswith(os.path.join("sub", "small.txt"))
        assert await comp.run_result(read_in_node_dir, os.path.join("sub", "small.txt")) == 1000
        # no overwrite unless asked
        with pytest.raises(dispycos.DispycosError):
            await comp.send_file(server, str(src))
        await comp.send_file(server, str(small), overwrite=True)
        assert not [f for f in os.listdir(os.path.dirname(landed)) if f.startswith(".dispycos-partial")]


@pytest_twisted.ensureDeferred
async def test_path_escapes_are_refused_and_nothing_written(node, tmp_path):
    small = tmp_path / "f.txt"
    small.write_bytes(b"data")
    async with Session(node, [length]) as comp:
        server = (await comp.servers())[0]
        for bad in ("..", "../..", "/tmp", "a/../../.."):
            with pytest.raises(dispycos.FileTransferError):
                await comp.send_file(server, str(small), dir=bad)
        # a link pointing out of the destination
        landed = await comp.send_file(server, str(small))
        root = os.path.dirname(landed)
        os.symlink("/tmp", os.path.join(root, "escape"))
        with pytest.raises(dispycos.FileTransferError):
            await comp.send_file(server, str(small), dir="escape")
        assert not os.path.exists(os.path.join("/tmp", "f.txt")) or os.path.getsize("/tmp/f.txt") != 4
        assert sorted(os.listdir(root)) == ["escape", "f.txt"]


@pytest_twisted.ensureDeferred
async def test_100_mib_argument_round_trip_keeps_node_memory_flat(node):
    node_proc = psutil.Process(node.proc.pid)
    async with Session(node, [length, echo]) as comp:
        before = node_proc.memory_info().rss
        blob = os.urandom(100 * 1024 * 1024)
        assert await comp.run_result(length, blob) == len(blob)
        back = await comp.run_result(echo, blob)
        assert back == blob
        del back
        growth = node_proc.memory_info().rss - before
        assert growth < 20 * 1024 * 1024, growth  # the node never holds the payload


def _base_type(arr):
    """The type of what C{arr}'s memory belongs to (down its chain of bases)."""
    import numpy

    base = arr
    while True:
        if isinstance(base, numpy.ndarray) and base.base is not None:
            base = base.base
        elif isinstance(base, memoryview):
            base = base.obj
        else:
            return type(base).__name__


def array_task(arr):
    """How the argument arrived; it is changed in place (it must be writable), and a new array goes back."""
    import numpy

    seen = {"owndata": bool(arr.flags.owndata), "base": _base_type(arr), "writeable": bool(arr.flags.writeable),
            "dtype": str(arr.dtype), "shape": arr.shape, "sum": int(arr.sum(dtype=numpy.int64))}
    arr += 1
    return seen, arr


@pytest_twisted.ensureDeferred
async def test_a_large_numpy_array_travels_out_of_band_both_ways(node):
    np = pytest.importorskip("numpy")
    a = np.arange(8 * 1024 * 1024, dtype=np.int32).reshape(2048, 4096)  # 32 MiB
    async with Session(node, [array_task, collect, _base_type]) as comp:
        seen, back = await comp.run_result(array_task, a)
        # The server's argument sat on the bytearray its blob was read into.
        assert seen == {"owndata": False, "base": "bytearray", "writeable": True, "dtype": "int32",
                        "shape": (2048, 4096), "sum": int(a.sum(dtype=np.int64))}
        np.testing.assert_array_equal(back, a + 1)
        assert back.dtype == a.dtype and not back.flags.owndata and _base_type(back) == "bytearray"
        assert back.flags.writeable
        # and as a message (a task receives it, and returns it)
        rtask = await comp.run(collect, 1)
        rtask.send(a)
        (got,) = await rtask.result(timeout=120)
        np.testing.assert_array_equal(got, a)
        # a mid-sized one, inline: equal, and writable as before
        mid = np.ones(100_000)
        seen, back = await comp.run_result(array_task, mid)
        assert seen["writeable"] and seen["sum"] == 100_000
        np.testing.assert_array_equal(back, mid + 1)


@pytest_twisted.ensureDeferred
async def test_twenty_thousand_messages_in_order(node):
    async with Session(node, [collect]) as comp:
        rtask = await comp.run(collect, 20000)
        for i in range(20000):
            rtask.send(i)
            if i % 2000 == 0:
                await sleep(0)
        assert await rtask.result(timeout=120) == list(range(20000))


@pytest_twisted.ensureDeferred
async def test_large_message_keeps_order_with_small_ones(node):
    async with Session(node, [collect]) as comp:
        rtask = await comp.run(collect, 4)
        big = os.urandom(dispycos.config.MaxInlineBytes + 100)
        rtask.send(1)
        rtask.send(big)
        rtask.send(2)
        assert await rtask.deliver(3) == 1
        got = await rtask.result(timeout=60)
        assert got[0] == 1 and got[1] == big and got[2:] == [2, 3]


SENDER = r'''
import sys
from twisted.internet import task, defer
import dispycos

def idle(task=None):
    yield task.sleep(600)

async def main(reactor):
    dispycos.Scheduler(nodes=[sys.argv[1]], secret=sys.argv[2], discover=False)
    comp = dispycos.Computation([idle])
    await comp.schedule(timeout=30)
    server = (await comp.servers())[0]
    print("SENDING", flush=True)
    await comp.send_file(server, sys.argv[3])
    print("SENT", flush=True)

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


def test_transfer_cut_by_killing_the_client_leaves_no_partial_file(node, tmp_path):
    src = tmp_path / "huge.bin"
    write_random(str(src), 400 * 1024 * 1024)
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    proc = subprocess.Popen([sys.executable, str(script), node.location, node.secret, str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env_for_children(tmp_path), text=True)
    try:
        assert proc.stdout.readline().strip() == "SENDING"
        deadline = time.monotonic() + 30
        partial = []
        while time.monotonic() < deadline and not partial:
            for root, _, files in os.walk(node.node_dir):
                partial += [os.path.join(root, f) for f in files if f.startswith(".dispycos-partial")]
            time.sleep(0.01)
        assert partial, "the transfer never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [f for _, _, files in os.walk(node.node_dir) for f in files
                if f.startswith(".dispycos-partial") or f == "huge.bin"]
        if not left:
            break
        time.sleep(0.1)
    assert not left


@pytest_twisted.ensureDeferred
async def test_max_file_size_refusal_leaves_nothing(fresh_node, tmp_path):
    node = fresh_node(cpus=1, args=["--max_file_size", "1k"])
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"s" * 1000)
    big.write_bytes(b"b" * 5000)
    async with Session(node, [length]) as comp:
        server = (await comp.servers())[0]
        landed = await comp.send_file(server, str(small))
        with pytest.raises(dispycos.FileTransferError) as info:
            await comp.send_file(server, str(big))
        assert "limit" in str(info.value)
        root = os.path.dirname(landed)
        assert sorted(os.listdir(root)) == ["small.bin"]
        # a payload over the inline cap is a stream too: the node's limit holds for it as well
        with pytest.raises(dispycos.DispycosError):
            await comp.run_result(length, b"x" * (dispycos.config.MaxInlineBytes + 10))
        assert sorted(os.listdir(root)) == ["small.bin"]


@pytest_twisted.ensureDeferred
async def test_fast_producer_with_drain_keeps_memory_bounded(node):
    me = psutil.Process()
    async with Session(node, [collect]) as comp:
        n = 30000
        rtask = await comp.run(collect, n)
        payload = b"p" * 1000
        before = me.memory_info().rss
        peak = 0
        for i in range(n):
            rtask.send((i, payload))
            if i % 500 == 0:
                await rtask.drain()
                peak = max(peak, me.memory_info().rss - before)
        got = await rtask.result(timeout=120)
        assert [i for i, _ in got] == list(range(n))
        assert peak < 64 * 1024 * 1024, peak  # 30 MB went through; little of it waited here


# -- blobs in parts and pieces (no network) ------------------------------------------

def test_dumps_parts_keeps_a_large_bytes_value_by_reference():
    from dispycos import serialize

    big = os.urandom(200 * 1024)
    mutable = bytearray(b"m" * 100 * 1024)
    parts = serialize.dumps_parts(((big, mutable), {}))
    assert any(p is big for p in parts)
    assert all(type(p) is bytes for p in parts)  # the bytearray was copied, not kept
    joined = b"".join(parts)
    assert joined == serialize.dumps(((big, mutable), {}))
    mutable[:1] = b"X"
    assert serialize.loads(joined) == ((big, bytearray(b"m" * 100 * 1024)), {})


class _Buffered:
    """Pickles its buffer out of band when it can, as numpy arrays do."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return (_Buffered, (pickle.PickleBuffer(self.data),))


def test_dumps_parts_copies_a_pickle_buffer():
    from dispycos import serialize

    data = bytearray(b"q" * 200 * 1024)
    parts = serialize.dumps_parts(_Buffered(data))
    assert all(type(p) is bytes for p in parts)
    data[:1] = b"X"
    assert bytes(serialize.loads(b"".join(parts)).data) == b"q" * 200 * 1024


def test_raw_frames_send_bytes_parts_as_they_are():
    from dispycos.protocol.streams import FRAME, MAX_FRAME, _frames

    big = b"b" * (2 * FRAME + 10)
    assert [f is big for f in _frames(big)] == [True]  # a bytes part: one frame, no copy
    assert list(_frames(b"")) == []
    view = memoryview(bytearray(big))  # other buffers: frames of FRAME bytes
    frames = list(_frames(view))
    assert b"".join(frames) == big and [len(f) for f in frames] == [FRAME, FRAME, 10]
    assert all(type(f) is bytes for f in frames)
    huge = b"h" * (MAX_FRAME + 1)
    assert [len(f) for f in _frames(huge)] == [FRAME] * (MAX_FRAME // FRAME) + [1]


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_blob_gathered_in_pieces_unpickles_without_a_join(protocol):
    from dispycos import serialize
    from dispycos.protocol.receiving import StreamReceiver

    value = {"big": os.urandom(300 * 1024), "text": "line\nother", "n": list(range(1000))}
    data = pickle.dumps(value, protocol=protocol)
    receiver = StreamReceiver(lambda dest, comp: None)
    sid = receiver.start("blob", "blob", "", "blob", len(data), b"\0" * 32, True, "")
    offset = 0
    for size in (1, 7, 65535, 100000, 1 << 20):  # pieces of odd sizes, then the rest
        piece = data[offset:offset + size]
        receiver.chunk(sid, offset, [piece[:3], piece[3:]])
        offset += len(piece)
    blob = receiver.finish(sid)
    assert serialize.loads(blob) == value


def test_a_blob_chunk_past_its_size_is_refused():
    from dispycos.errors import FileTransferError
    from dispycos.protocol.receiving import StreamReceiver

    receiver = StreamReceiver(lambda dest, comp: None)
    sid = receiver.start("blob", "blob", "", "blob", 10, b"\0" * 32, True, "")
    receiver.chunk(sid, 0, [b"12345", b"678"])
    with pytest.raises(FileTransferError):
        receiver.chunk(sid, 8, [b"9", b"01"])
    assert sid not in receiver.open


def test_a_gathered_blob_reads_no_more_than_it_holds():
    from dispycos.protocol.receiving import StreamReceiver

    receiver = StreamReceiver(lambda dest, comp: None)
    sid = receiver.start("blob", "blob", "", "blob", 11, b"\0" * 32, True, "")
    receiver.chunk(sid, 0, [b"1234\n", b"567", b"89\n"])
    blob = receiver.finish(sid)
    assert blob.readline() == b"1234\n"
    assert blob.read(2 ** 40) == b"56789\n"  # a claimed size is not allocated
    assert blob.read(1) == b"" and blob.readline() == b""
