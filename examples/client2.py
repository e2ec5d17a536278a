"""
Results of remote tasks: every task returns a value that the client collects
with ``RemoteTask.result()``.

``compute(i, n)`` sleeps n seconds on a server and returns where and when it
finished. The client first submits all jobs, then waits for their results in
the order it submitted them (a result that arrived early simply waits to be
collected). A task that fails shows up as an exception from ``result()``.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client2.py [N]          # N jobs, 10 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client2.py [N]
"""

import random
import sys
import time

from twisted.internet import defer, task

import dispycos


def compute(i, n, task=None):
    """Runs on a server: sleep n seconds, then say where and when it ended."""
    yield task.sleep(n)
    return (i, task.location, time.asctime())


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute])
        await computation.schedule(timeout=60)
        rtasks = []
        for i in range(njobs):
            rtask = await computation.run(compute, i, random.uniform(0.5, 2))
            rtasks.append(rtask)
        for i, rtask in enumerate(rtasks):
            try:
                j, location, when = await rtask.result()
            except dispycos.DispycosError as e:
                print("  ** job %d (%s) failed: %s" % (i, rtask, e), flush=True)
            else:
                print("    result for %d from %s: %s" % (j, location, when), flush=True)
        await computation.close()
        print("done: %d jobs" % njobs, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
