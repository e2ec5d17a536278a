"""
A blocking computation that still talks: the remote task is a plain
function, so it runs in a worker thread of its server and may block (here
with ``time.sleep``) without stopping messages or heartbeats.

Each job gets a reply task of the client first, then numbers. For every number
it blocks for that many seconds and adds it to a sum; on ``None`` it sends
the sum back. The client sends the numbers at short intervals while the remote
thread is busy sleeping: they wait in the task's mailbox, none is lost. (In a
plain-function task ``task.receive()`` blocks and returns the message, and
``reply.deliver(...)`` blocks until the message is delivered.)

Run it with a private cluster started for the occasion (two servers)::

    python examples/client8.py [N]          # N jobs, 2 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client8.py [N]
"""

import random
import sys
import time

from twisted.internet import defer, task
from twisted.internet.task import deferLater

import dispycos


def compute_task(task=None):
    """Runs in a worker thread of a server: every call below blocks."""
    reply = task.receive()
    total = 0
    while True:
        n = task.receive()
        if n is None:
            break
        time.sleep(n)  # a long computation that never yields
        total += n
    reply.deliver((task.location, total))
    return total


def results_proc(njobs, task=None):
    """Runs in the client: print the sums as they come back."""
    for _ in range(njobs):
        location, total = yield task.receive()
        print("    %s computed result: %.1f" % (location, total), flush=True)


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute_task])
        await computation.schedule(timeout=60)
        results = dispycos.Task(results_proc, njobs)

        async def job(i):
            rtask = await computation.run(compute_task)
            print("  job %d processed by %s" % (i, rtask.location), flush=True)
            rtask.send(results)
            for _ in range(5):
                n = round(random.uniform(1, 2), 1)
                print("      job %d sends %.1f" % (i, n), flush=True)
                rtask.send(n)  # the remote thread is blocked meanwhile
                await deferLater(reactor, random.uniform(0.2, 0.5), lambda: None)
            await rtask.deliver(None)
            return await rtask.result()

        await defer.gatherResults([defer.ensureDeferred(job(i)) for i in range(njobs)], consumeErrors=True)
        await results.result()
        await computation.close()
        print("done: %d jobs" % njobs, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
