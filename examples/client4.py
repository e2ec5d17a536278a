"""
Files both ways: the client sends every input file to the server that runs
its job, the job sends a result file back.

For each input file the client starts ``rtask_proc`` on a server (the function
is not a component: its code travels with every call), sends the file to that
server with ``Computation.send_file`` (it lands in the server's directory,
the task's current directory) and delivers a ``C`` object naming the file and
a reply task. The remote task writes ``result-<file>`` with one line per input
line (``line number: length``), sends it to the client with
``task.send_file`` (it lands in the computation's ``dest_path``), deletes both
files and delivers the object back. The client moves each result file into a
results directory and prints where it is.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client4.py [FILE ...]   # a few generated files by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client4.py [FILE ...]
"""

import os
import random
import shutil
import sys
import tempfile

from twisted.internet import defer, task

import dispycos


class C:
    """What the client and a remote task tell each other about one job."""

    def __init__(self, i, name, reply):
        self.i = i
        self.name = name  # the input file's name (in the server's directory)
        self.reply = reply  # the client task waiting for this job
        self.result_path = None  # where the result landed at the client


def rtask_proc(task=None):
    """Runs on a server: number the lines of a file, send the numbers back."""
    import os

    obj = yield task.receive()
    result_name = "result-" + obj.name
    with open(obj.name, "rb") as src, open(result_name, "w") as out:
        for n, line in enumerate(src, 1):
            out.write("%d: %d\n" % (n, len(line)))
    yield task.sleep(0.2)  # a stand-in for real work
    obj.result_path = yield task.send_file(result_name, overwrite=True)
    os.remove(obj.name)
    os.remove(result_name)
    yield obj.reply.deliver(obj)
    return obj.name


def reply_proc(task=None):
    """Runs in the client: wait for the object of one job."""
    obj = yield task.receive()
    return obj


def make_inputs(directory, count=4):
    """A few text files of random lines, for when no files are given."""
    paths = []
    for i in range(count):
        path = os.path.join(directory, "input%d.txt" % i)
        with open(path, "w") as f:
            for _ in range(random.randint(3, 8)):
                f.write("x" * random.randint(0, 40) + "\n")
        paths.append(path)
    return paths


async def main(reactor):
    scratch = None
    if len(sys.argv) > 1:
        inputs = [os.path.abspath(p) for p in sys.argv[1:]]
    else:
        scratch = tempfile.mkdtemp(prefix="dispycos-client4-inputs-")
        inputs = make_inputs(scratch)
    results_dir = tempfile.mkdtemp(prefix="dispycos-client4-results-")
    try:
        async with dispycos.default_cluster(cpus=2):
            computation = dispycos.Computation([C])
            await computation.schedule(timeout=60)

            async def job(i, path):
                # A CPU task: waits until a server is free; then the file goes to that server.
                rtask = await computation.run(rtask_proc)
                await computation.send_file(rtask.location, path, overwrite=True)
                reply = dispycos.Task(reply_proc)
                await rtask.deliver(C(i, os.path.basename(path), reply))
                obj = await reply.result()
                await rtask.result()
                target = os.path.join(results_dir, os.path.basename(obj.result_path))
                if os.path.exists(target):  # two inputs of the same name
                    target = os.path.join(results_dir, "%d-%s" % (i, os.path.basename(obj.result_path)))
                shutil.move(obj.result_path, target)
                print("    job %d output is in %s" % (i, target), flush=True)

            jobs = [defer.ensureDeferred(job(i, path)) for i, path in enumerate(inputs)]
            await defer.gatherResults(jobs, consumeErrors=True)
            await computation.close()
            shutil.rmtree(computation.dest_path, ignore_errors=True)  # where results arrived: a fresh directory
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("done: %d files, results in %s" % (len(inputs), results_dir), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
