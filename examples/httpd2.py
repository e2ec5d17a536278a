"""
Chaining status messages: the computation's own ``status_task`` and the
browser monitor both see every status message.

The computation is created with a local task as its ``status_task``; the
monitor (``dispycos.httpd.HTTPServer``), created next, installs itself in
front of it and forwards every message, so this client still prints when
each remote task is created and when it ends, while the browser (at the
address the monitor prints, ``http://127.0.0.1:8181/?token=...``) shows the
same events.

Every line typed on standard input starts an asynchronous task that sleeps
a while (the number on the line, in seconds, or 20 to 50 seconds at
random). ``quit`` (or end of input) closes the computation *without*
``await_async``: tasks still running are terminated, and the status task
reports them so.

    python examples/httpd2.py                       # a private 2-server cluster
    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/httpd2.py

``DISPYCOS_HTTP_PORT`` picks another port for the monitor (0: any free port).
"""

import os
import random

from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver

import dispycos
import dispycos.httpd
from dispycos import DispycosStatus, Status


def pause(seconds, task=None):
    """Runs on a server: sleep, then say how long."""
    yield task.sleep(seconds)
    return seconds


def status_proc(task=None):
    """This client's own status task: prints task events, ends with the computation."""
    while True:
        msg = yield task.receive()
        if not isinstance(msg, DispycosStatus):
            continue  # resource reports (DispycosNodeAvailInfo) every pulse
        if msg.status == Status.TaskCreated:
            print("  task %s created (sleeps %s s)" % (msg.info.task, msg.info.args[0]), flush=True)
        elif msg.status == Status.TaskFinished:
            info = msg.info
            if info.exception is None:
                print("    task %s done: %s" % (info.task, info.result), flush=True)
            else:
                print("    task %s ended: %s" % (info.task, type(info.exception).__name__), flush=True)
        elif msg.status == Status.ComputationClosed:
            print("computation closed", flush=True)
            return


class Lines(LineReceiver):
    """Standard input, line by line, into a queue (None at its end)."""

    delimiter = b"\n"

    def __init__(self, queue):
        self.queue = queue

    def lineReceived(self, line):
        self.queue.put(line.decode(errors="replace").strip())

    def connectionLost(self, reason):
        self.queue.put(None)


async def main(reactor):
    port = int(os.environ.get("DISPYCOS_HTTP_PORT", "8181"))
    async with dispycos.default_cluster(cpus=2):
        status_task = dispycos.Task(status_proc)
        computation = dispycos.Computation([pause], status_task=status_task)
        monitor = dispycos.httpd.HTTPServer(computation, port=port)  # chains to status_task
        await computation.schedule(timeout=60)
        lines = defer.DeferredQueue()
        stdio.StandardIO(Lines(lines))
        print("press Enter (or type seconds) to start a task, 'quit' to end:", flush=True)
        count = 0
        while True:
            line = await lines.get()
            if line is None or line.lower() in ("quit", "exit"):
                break
            try:
                seconds = float(line)
            except ValueError:
                seconds = random.uniform(20, 50)
            await computation.run_async(pause, round(seconds, 1))
            count += 1
        # no await_async: tasks still running are terminated
        await computation.close()
        await status_task.result()
        await monitor.shutdown()
        print("done: %d tasks" % count, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
