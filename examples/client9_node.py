"""
In-memory data at node level: each node loads a data file once, before its
servers start, and every task on that node works on the data in memory.

With ``disable_nodes=True`` the scheduler holds every node it discovers until
the client enables it. The status task, on ``NodeDiscovered``, sends a data
file to the node (``send_file`` to the node's IP: the file lands in the node
directory) and calls ``enable_node(ip, file_name)``; the node then runs
``node_setup(file_name)``, which reads the file into the globals ``data`` and
``file_name`` (and imports ``hashlib`` as a global), deletes the file and
returns 0. Its globals reach every server of the node. Then 15 tasks compute
checksums of the data with various algorithms; the client checks them against
its own copy of the files.

``node_allocations`` keeps Windows nodes out. (The platform expression must
*not* match ``Windows``: a node that no allocation accepts is not used.)

Run it with a private cluster started for the occasion (two servers)::

    python examples/client9_node.py

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client9_node.py
"""

import hashlib
import os
import random
import shutil
import tempfile

from twisted.internet import defer, task

import dispycos
from dispycos import DispycosStatus, Status

ALGORITHMS = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"]


def node_setup(data_file):
    """Runs once on each node, in the node directory, before its servers serve."""
    global data, file_name, hashlib
    import hashlib
    import os

    with open(data_file, "rb") as f:
        data = f.read()
    file_name = data_file
    os.remove(data_file)  # the data is in memory now
    print('data_file: "%s"' % data_file, flush=True)
    return 0


def compute(alg, n, task=None):
    """Runs on a server: a checksum of the node's data (a global of node_setup)."""
    yield task.sleep(n)
    return (file_name, alg, getattr(hashlib, alg)(data).hexdigest())


def status_proc(computation, data_files, ready, task=None):
    """Runs in the client: send each discovered node a data file, then enable it."""
    nodes = 0
    while True:
        msg = yield task.receive()
        if not isinstance(msg, DispycosStatus):
            continue  # DispycosNodeAvailInfo every pulse
        if msg.status == Status.NodeDiscovered:
            path = data_files[nodes % len(data_files)]
            nodes += 1
            try:
                yield computation.send_file(msg.info.addr, path, overwrite=True)
                yield computation.enable_node(msg.info.addr, os.path.basename(path))
            except Exception as e:
                print("  ** node %s not enabled: %s" % (msg.info.addr, e), flush=True)
                if not ready.called:
                    ready.errback(e)
                continue
            print("  node %s enabled with %s" % (msg.info.addr, os.path.basename(path)), flush=True)
        elif msg.status == Status.ServerInitialized:
            if not ready.called:
                ready.callback(msg.info)
        elif msg.status == Status.NodeClosed and getattr(msg, "exception", None) is not None:
            print("  ** node %s: %s" % (msg.info.addr, msg.exception), flush=True)
            if not ready.called:
                ready.errback(msg.exception)
        elif msg.status == Status.ComputationClosed:
            return nodes


async def main(reactor):
    scratch = tempfile.mkdtemp(prefix="dispycos-client9-")
    try:
        await checksums(reactor, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def checksums(reactor, scratch):
    data_files, expected = [], {}
    for i in range(2):
        path = os.path.join(scratch, "node-data-%d.bin" % i)
        content = os.urandom(random.randint(100000, 200000))
        with open(path, "wb") as f:
            f.write(content)
        data_files.append(path)
        for alg in ALGORITHMS:
            expected[(os.path.basename(path), alg)] = getattr(hashlib, alg)(content).hexdigest()

    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation(
            [compute], node_setup=node_setup, disable_nodes=True,
            node_allocations=[dispycos.DispycosNodeAllocate("*", platform="^(?!windows)")])
        ready = defer.Deferred()
        computation.status_task = dispycos.Task(status_proc, computation, data_files, ready)
        await computation.schedule(timeout=60)
        await ready.addTimeout(60, reactor)  # a node was set up and a server is ready
        jobs = [computation.run_result(compute, random.choice(ALGORITHMS), random.uniform(0.05, 0.2))
                for _ in range(15)]
        right = 0
        for d in jobs:
            try:
                name, alg, checksum = await d
            except dispycos.DispycosError as e:
                print("  ** job failed: %s" % e, flush=True)
                continue
            print("   %ssum for %s: %s" % (alg, name, checksum), flush=True)
            right += expected.get((name, alg)) == checksum
        await computation.close()
    print("done: %d checksums, %d correct" % (len(jobs), right), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
