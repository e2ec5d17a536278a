"""
Live analytics: a stream of data items analysed by two remote tasks at once.

The computation has no components (``Computation([])``): the code of each
task function travels with the call that starts it. One task keeps a moving
average of the last ``WINDOW`` values and tells a trend task in the client
whenever the average rises above ``THRESHOLD`` or falls below
``-THRESHOLD``; the other saves every item in a file ``tickdata`` in its
server's directory. The client sends every ``(pos, value)`` item to both as
fast as it can (``send`` is not acknowledged, but messages from one sender
arrive in order), then ``(pos, None)``; it computes the same signals locally
to check what came back.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client6.py [N]          # N items, 1000 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client6.py [N]
"""

import random
import sys

from twisted.internet import defer, task

import dispycos

WINDOW = 10
THRESHOLD = 0.4


def trend_signals(items, threshold, window):
    """
    The signals for C{items}: C{(pos, 'high'|'low', average)} each time the
    moving average over C{window} values enters the high or the low zone:
    what the averaging task finds, computed in the client to check it.
    """
    from collections import deque

    values, total, zone, signals = deque(), 0.0, None, []
    for pos, value in items:
        values.append(value)
        total += value
        if len(values) > window:
            total -= values.popleft()
        if len(values) < window:
            continue
        avg = total / window
        now = "high" if avg > threshold else "low" if avg < -threshold else None
        if now is not None and now != zone:
            signals.append((pos, now, avg))
        zone = now
    return signals


def rtask_avg_proc(threshold, trend_task, window, task=None):
    """Runs on a server: moving average of the stream; signals go to trend_task."""
    from collections import deque

    values, total, zone, count = deque(), 0.0, None, 0
    while True:
        pos, value = yield task.receive()
        if value is None:
            break
        count += 1
        values.append(value)
        total += value
        if len(values) > window:
            total -= values.popleft()
        if len(values) < window:
            continue
        avg = total / window
        now = "high" if avg > threshold else "low" if avg < -threshold else None
        if now is not None and now != zone:
            trend_task.send((pos, now, avg))
        zone = now
    yield trend_task.deliver(None)  # after every signal: the trend task has them all
    return count


def rtask_save_proc(task=None):
    """Runs on a server: save the stream in 'tickdata' (server directory)."""
    import os

    count = 0
    with open("tickdata", "w") as f:
        while True:
            pos, value = yield task.receive()
            if value is None:
                break
            f.write("%d %r\n" % (pos, value))
            count += 1
    return (count, os.path.abspath("tickdata"))


def trend_proc(task=None):
    """Runs in the client: print trend signals as they come."""
    signals = []
    while True:
        signal = yield task.receive()
        if signal is None:
            return signals
        pos, trend, avg = signal
        print("trend signal at %d: %s / %.4f" % (pos, trend, avg), flush=True)
        signals.append(signal)


async def main(reactor):
    nitems = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([])
        await computation.schedule(timeout=60)
        trend = dispycos.Task(trend_proc)
        # Both tasks mostly wait for messages: neither needs a CPU of its own,
        # and each asynchronous task goes to the server with fewest tasks.
        avg = await computation.run_async(rtask_avg_proc, THRESHOLD, trend, WINDOW)
        save = await computation.run_async(rtask_save_proc)
        print("averaging at %s, saving at %s" % (avg.location, save.location), flush=True)
        items = [(pos, random.uniform(-1, 1)) for pos in range(nitems)]
        for item in items:
            avg.send(item)
            save.send(item)
        avg.send((nitems, None))
        save.send((nitems, None))
        averaged = await avg.result()
        saved, path = await save.result()
        signals = await trend.result()
        expected = trend_signals(items, THRESHOLD, WINDOW)
        await computation.close()
        same = [(p, t) for p, t, _ in signals] == [(p, t) for p, t, _ in expected]
        print("averaged %d items, saved %d items in %s at %s" % (averaged, saved, path, save.location), flush=True)
        print("done: %d items, %d trend signals (%s the client's own)" % (
            nitems, len(signals), "same as" if same else "DIFFERENT FROM"), flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
