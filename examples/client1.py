"""
Basic distribution: run the same function as many tasks on the servers of a
cluster.

``compute`` just sleeps a few seconds (a stand-in for real work). Each call of
``Computation.run`` waits until a server is free to take another CPU task, so
the "processed by" lines below appear in pace with the servers: at first one
per server at once, then one as each earlier job finishes. ``close()`` then
waits for the jobs still running.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client1.py [N]          # N jobs, 10 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client1.py [N]
"""

import random
import sys

from twisted.internet import defer, task

import dispycos


def compute(n, task=None):
    """Runs on a server: pretend to work for n seconds."""
    yield task.sleep(n)
    return n


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute])
        await computation.schedule(timeout=60)
        for i in range(njobs):
            # waits while every server already runs a CPU task
            rtask = await computation.run(compute, random.uniform(1, 3))
            print("  job %d processed by %s" % (i, rtask.location), flush=True)
        await computation.close()  # waits for the jobs that still run
        print("done: %d jobs" % njobs, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
