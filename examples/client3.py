"""
Objects in messages: remote tasks receive instances of a class of the client
and send them back.

The components are the task function ``compute`` and the class ``C``. Every
remote task waits for a ``C`` object in its mailbox, prints (on the node's
console) what it got, sleeps ``obj.n`` seconds, replaces ``obj.n`` by its
square root and delivers the object to ``results``, a task running in the
client. The client prints each request as it sends it and each result as it
comes back, in completion order.

Run it with a private cluster started for the occasion (two servers; their
output is shown here too)::

    python examples/client3.py [N]          # N jobs, 10 by default

or against nodes that are already running (``dispycosnode``; the remote
"process at ..." lines then appear on the node's console)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client3.py [N]
"""

import math
import random
import sys

from twisted.internet import defer, task

import dispycos


class C:
    def __init__(self, i, n):
        self.i = i
        self.n = n

    def __repr__(self):
        return "%d: %.4f" % (self.i, self.n)


def compute(reply, task=None):
    """Runs on a server: get a C object, work on it, deliver it to reply."""
    obj = yield task.receive()
    print("process at %s received: %.4f" % (task.location, obj.n), flush=True)
    yield task.sleep(obj.n)
    obj.n = math.sqrt(obj.n)
    yield reply.deliver(obj)


def results_proc(njobs, task=None):
    """Runs in the client: print the objects sent back, as they come."""
    got = []
    for k in range(njobs):
        obj = yield task.receive()
        print("    result for job %d: %r" % (k, obj), flush=True)
        got.append(obj)
    return got


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute, C])
        await computation.schedule(timeout=60)
        results = dispycos.Task(results_proc, njobs)
        for i in range(njobs):
            obj = C(i, random.uniform(0.5, 2))
            rtask = await computation.run(compute, results)
            await rtask.deliver(obj)
            print("  request %d: %.4f" % (i, obj.n), flush=True)
        await results.result()  # every object came back
        await computation.close()
        print("done: %d jobs" % njobs, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
