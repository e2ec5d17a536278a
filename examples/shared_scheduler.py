"""
Using a shared scheduler: the ``dispycos`` program, run on some host, owns
the nodes and runs the computations of any number of clients, one after the
other (first come, first served).

The client has no scheduler of its own: ``schedule(location)`` submits the
computation to the shared scheduler at ``location`` (``host[:port]``) and
fires once it is this computation's turn and a server is ready. The secret
(``$DISPYCOS_SECRET``) is the one the scheduler was started with.

A subclass of ``DispycosNodeAllocate`` decides how many servers of each node
to use; its ``allocate`` runs here, in the client, even though the scheduler
is elsewhere (it asks the client). Each job sleeps a few tenths of a second on
a server and sends its reply to a task of the client.

Start a shared scheduler for nodes that are already running, then run the
example with its location::

    DISPYCOS_SECRET=... dispycos -i 127.0.0.1 -t 9705 --node host:port --daemon &
    DISPYCOS_SECRET=... python examples/shared_scheduler.py 127.0.0.1:9705 [N]

The location may also come from ``$DISPYCOS_SCHEDULER``; without either the
client looks for a shared scheduler on the local network. N jobs, 6 by
default. (Unlike the other examples this one starts no cluster, and
``DISPYCOS_NODES=`` plays no part: the scheduler knows the nodes.)
"""

import os
import random
import re
import sys
import time

from twisted.internet import defer, task

import dispycos


class NodeAllocate(dispycos.DispycosNodeAllocate):
    """Use every server of every node, and say so (this runs in the client)."""

    def allocate(self, ip_addr, name, platform, cpus, memory, disk):
        print("Allocate %s (%s): %d" % (ip_addr, platform, cpus), flush=True)
        return cpus


def compute(i, n, reply, task=None):
    """Runs on a server: sleep n seconds, then tell the client where and when."""

    yield task.sleep(n)
    reply.send((i, task.location, time.asctime()))
    return n


def replies_proc(njobs, task=None):
    """Runs in the client: print the replies as they come."""
    for _ in range(njobs):
        i, location, when = yield task.receive()
        print("      Received reply for %d from %s: %s" % (i, location, when), flush=True)


async def main(reactor):
    args = sys.argv[1:]
    location = os.environ.get("DISPYCOS_SCHEDULER") or None
    if args and not re.fullmatch(r"\d+", args[0]):
        location = args.pop(0)
    njobs = int(args[0]) if args else 6
    computation = dispycos.Computation([compute], secret=os.environ.get("DISPYCOS_SECRET", ""),
                                       node_allocations=[NodeAllocate("*")])
    await computation.schedule(location, timeout=60)
    replies = dispycos.Task(replies_proc, njobs)
    rtasks = []
    for i in range(njobs):
        n = round(random.uniform(0.2, 0.8), 2)
        rtask = await computation.run(compute, i, n, replies)
        print("  Task %d created for %.2f at %s" % (i, n, rtask.location), flush=True)
        rtasks.append(rtask)
    total = sum([await rtask.result() for rtask in rtasks])
    await replies.result()
    await computation.close()
    print("done: %d jobs, %.2f s of work" % (njobs, total), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
