"""
A channel broadcasts one stream of data to several remote tasks.

The client creates ``dispycos.Channel('data_channel')`` and passes it to two
remote tasks, which subscribe to it. ``channel.deliver('start', n=2)`` waits
until both have subscribed and fires with the number of subscribers that got
the message: 2. Then every ``channel.send(item)`` reaches both tasks (in
order, as all messages from one sender). One task computes the mean of the
values, the other their minimum and maximum; ``None`` ends the stream (sent
with ``deliver``: acknowledged by both) and each task returns its result,
which the client compares with its own computation.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client6_channel.py [N]          # N items, 1000 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client6_channel.py [N]
"""

import math
import random
import sys

from twisted.internet import defer, task

import dispycos


def mean_proc(channel, task=None):
    """Runs on a server: the mean of the values broadcast on the channel."""
    yield channel.subscribe(task)
    start = yield task.receive()  # the client waits until both tasks got it
    if start != "start":
        raise ValueError("expected 'start', got %r" % (start,))
    total, count = 0.0, 0
    while True:
        item = yield task.receive()
        if item is None:
            break
        total += item[1]
        count += 1
    yield channel.unsubscribe(task)
    return ("mean", count, total / count if count else None)


def range_proc(channel, task=None):
    """Runs on a server: the smallest and the largest value broadcast."""
    yield channel.subscribe(task)
    start = yield task.receive()  # the client waits until both tasks got it
    if start != "start":
        raise ValueError("expected 'start', got %r" % (start,))
    low = high = None
    count = 0
    while True:
        item = yield task.receive()
        if item is None:
            break
        value = item[1]
        low = value if low is None else min(low, value)
        high = value if high is None else max(high, value)
        count += 1
    yield channel.unsubscribe(task)
    return ("range", count, (low, high))


async def main(reactor):
    nitems = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([mean_proc, range_proc])
        await computation.schedule(timeout=60)
        channel = dispycos.Channel("data_channel")
        # Tasks that wait for messages need no CPU of their own.
        rtasks = [await computation.run_async(mean_proc, channel), await computation.run_async(range_proc, channel)]
        for rtask in rtasks:
            print("  %s runs at %s" % (rtask.name, rtask.location), flush=True)
        reached = await channel.deliver("start", n=2)
        print("'start' reached %d subscribers" % reached, flush=True)
        values = [random.uniform(-1, 1) for _ in range(nitems)]
        for pos, value in enumerate(values):
            channel.send((pos, value))
        await channel.deliver(None, n=2)
        results = dict((kind, (count, value)) for kind, count, value in
                       [await rtask.result() for rtask in rtasks])
        await computation.close()
        count, mean = results["mean"]
        ok = count == nitems and math.isclose(mean, sum(values) / nitems, abs_tol=1e-9)
        print("mean of %d items: %.6f (%s)" % (count, mean, "correct" if ok else "WRONG"), flush=True)
        count, (low, high) = results["range"]
        ok = count == nitems and (low, high) == (min(values), max(values))
        print("range of %d items: %.6f .. %.6f (%s)" % (count, low, high, "correct" if ok else "WRONG"), flush=True)
        print("done: %d items to %d subscribers" % (nitems, reached), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
