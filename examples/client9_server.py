"""
In-memory data at server level: every server loads its own data file once,
and the tasks on that server work on that data in memory.

With ``disable_servers=True`` each server waits, after it started, until the
client enables it. The status task, on ``ServerDiscovered``, sends a data file
(a different one to each server) to that server's location (it lands in the
server's directory) and calls ``enable_server(location, file_name)``; the
server then runs ``server_setup(file_name)``, which reads the file into the
globals ``data`` and ``file_name``, deletes it and returns 0. Then 15 tasks
compute checksums of their server's data; the client checks them against its
own copy of the files.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client9_server.py

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client9_server.py
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


def server_setup(data_file):
    """Runs once on each server, in its directory, before it takes tasks."""
    global data, file_name
    import os

    with open(data_file, "rb") as f:
        data = f.read()
    file_name = data_file
    os.remove(data_file)  # the data is in memory now
    print("%s processing %s" % (dispycos_server_location, data_file), flush=True)
    return 0


def compute(alg, n, task=None):
    """Runs on a server: a checksum of this server's data (a global of server_setup)."""
    import hashlib

    yield task.sleep(n)
    return (file_name, alg, getattr(hashlib, alg)(data).hexdigest())


def status_proc(computation, scratch, ready, task=None):
    """Runs in the client: give each discovered server a data file of its own, then enable it."""
    files = {}
    while True:
        msg = yield task.receive()
        if not isinstance(msg, DispycosStatus):
            continue  # DispycosNodeAvailInfo every pulse
        if msg.status == Status.ServerDiscovered:
            location = msg.info
            path = os.path.join(scratch, "server-data-%d.bin" % len(files))
            with open(path, "wb") as f:
                f.write(os.urandom(random.randint(100000, 200000)))
            files[os.path.basename(path)] = path
            try:
                yield computation.send_file(location, path, overwrite=True)
                yield computation.enable_server(location, os.path.basename(path))
            except Exception as e:
                print("  ** server %s not enabled: %s" % (location, e), flush=True)
                continue
            print("  server %s enabled with %s" % (location, os.path.basename(path)), flush=True)
        elif msg.status == Status.ServerInitialized:
            if not ready.called:
                ready.callback(msg.info)
        elif msg.status == Status.ServerClosed and getattr(msg, "exception", None) is not None:
            print("  ** server %s: %s" % (msg.info, msg.exception), flush=True)
        elif msg.status == Status.ComputationClosed:
            return files


async def main(reactor):
    scratch = tempfile.mkdtemp(prefix="dispycos-client9-")
    try:
        await checksums(reactor, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def checksums(reactor, scratch):
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute], server_setup=server_setup, disable_servers=True)
        ready = defer.Deferred()
        computation.status_task = dispycos.Task(status_proc, computation, scratch, ready)
        await computation.schedule(timeout=60)
        await ready.addTimeout(60, reactor)  # a server was set up
        jobs = [computation.run_result(compute, random.choice(ALGORITHMS), random.uniform(0.05, 0.2))
                for _ in range(15)]
        results = []
        for d in jobs:
            try:
                name, alg, checksum = await d
            except dispycos.DispycosError as e:
                print("  ** job failed: %s" % e, flush=True)
                continue
            print("   %ssum for %s: %s" % (alg, name, checksum), flush=True)
            results.append((name, alg, checksum))
        await computation.close()
        files = await computation.status_task.result()
    right = 0
    for name, alg, checksum in results:
        with open(files[name], "rb") as f:
            right += getattr(hashlib, alg)(f.read()).hexdigest() == checksum
    print("done: %d checksums, %d correct" % (len(jobs), right), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
