"""
An external program driven through pipes by a remote task.

The program, ``client5_proc.py``, is a component of the computation, so it
is copied to every node's directory (``..`` of each server). For every job
a remote task starts it with ``task.run_program``, forwards the numbers the
client sends it to the program's standard input and sends each line the
program prints back to a reader task in the client. The program sleeps each
number and prints ``Line k - current time is ...``; the client sends a few
random numbers at random intervals, then ``None``, which closes the program's
input. The task's result is the program's exit code (the number of lines it
could not parse: 0 here).

Run it with a private cluster started for the occasion (two servers)::

    python examples/client5.py [N]          # N jobs, 4 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client5.py [N]
"""

import os
import random
import sys

from twisted.internet import defer, task
from twisted.internet.task import deferLater

import dispycos

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client5_proc.py")


def program_path():
    """
    Where the program lands relative to a server's directory: a component
    file under the client's current directory keeps its relative path in the
    node directory; any other lands there by its name.
    """
    rel = os.path.relpath(PROGRAM)
    if rel.startswith(os.pardir):
        rel = os.path.basename(PROGRAM)
    return os.path.join(os.pardir, rel)


def rtask_proc(program, reader, task=None):
    """Runs on a server: start the program, feed it our messages, forward its lines."""
    import sys

    from twisted.internet import defer

    proc = task.run_program([sys.executable, "-u", program])

    @defer.inlineCallbacks
    def forward_output():
        while True:
            line = yield proc.readline()
            if line is None:
                break
            reader.send(line)
        # Acknowledged, and after every line sent before it: the reader has them all.
        yield reader.deliver(None)

    forwarding = forward_output()
    while True:
        n = yield task.receive()
        if n is None:
            break
        proc.writeline(n)
    proc.close_stdin()
    code = yield proc.wait()
    yield forwarding
    return code


def reader_proc(i, task=None):
    """Runs in the client: print the program's lines of job i."""
    count = 0
    while True:
        line = yield task.receive()
        if line is None:
            return count
        count += 1
        print("      job %d output: %s" % (i, line), flush=True)


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([PROGRAM])
        await computation.schedule(timeout=60)

        async def job(i):
            reader = dispycos.Task(reader_proc, i)
            rtask = await computation.run(rtask_proc, program_path(), reader)
            for _ in range(5):
                rtask.send(round(random.uniform(0, 0.5), 2))
                await deferLater(reactor, random.uniform(0, 0.2), lambda: None)
            rtask.send(None)
            code = await rtask.result()
            lines = await reader.result()
            print("  job %d done: %d lines, exit code %d" % (i, lines, code), flush=True)
            return code

        codes = await defer.gatherResults([defer.ensureDeferred(job(i)) for i in range(njobs)], consumeErrors=True)
        await computation.close()
        print("done: %d jobs, exit codes %s" % (njobs, codes), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
