"""
Interactive asynchronous tasks, watched in a browser.

Type a number of seconds on standard input and a job that sleeps that long
starts on some server as an *asynchronous* task (``run_async``): any number
of them may run on a server at once. Each job sends a note to a local task
of this client when it starts, and returns what it was given. Something
that is not a number is refused; ``quit`` (or end of input) closes the
computation with ``close(await_async=True)``, which waits for the jobs still
running before the monitor stops.

While it runs, open the address the monitor prints (``dispycos monitor at
http://127.0.0.1:8181/?token=...``; only who has the token gets in) in a
browser: the Cluster page shows the node and its task counts, the
Server pages the running jobs with their arguments (and can terminate them).

    python examples/httpd1.py                       # a private 2-server cluster
    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/httpd1.py

``DISPYCOS_HTTP_PORT`` picks another port for the monitor (0: any free port).
"""

import os

from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver

import dispycos
import dispycos.httpd


class Job:
    """What a job is told: its number and how long to sleep."""

    def __init__(self, number, seconds):
        self.number = number
        self.seconds = seconds


def compute(job, client, task=None):
    """Runs on a server: say where it started, sleep, return the seconds."""
    client.send((job.number, str(task.location)))
    yield task.sleep(job.seconds)
    return job.seconds


def notes(task=None):
    """A local task: prints the notes the jobs send."""
    while True:
        number, location = yield task.receive()
        print("    job %d started at %s" % (number, location), flush=True)


class Lines(LineReceiver):
    """Standard input, line by line, into a queue (None at its end)."""

    delimiter = b"\n"

    def __init__(self, queue):
        self.queue = queue

    def lineReceived(self, line):
        self.queue.put(line.decode(errors="replace").strip())

    def connectionLost(self, reason):
        self.queue.put(None)


def report(rtask, number):
    def done(seconds):
        print("    job %d done after %s seconds" % (number, seconds), flush=True)

    def failed(f):
        print("    job %d failed: %s" % (number, f.getErrorMessage()), flush=True)

    rtask.result().addCallbacks(done, failed)


async def main(reactor):
    port = int(os.environ.get("DISPYCOS_HTTP_PORT", "8181"))
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute, Job], pulse_interval=dispycos.MinPulseInterval)
        monitor = dispycos.httpd.HTTPServer(computation, port=port)  # before schedule()
        await computation.schedule(timeout=60)
        client = dispycos.Task(notes)
        lines = defer.DeferredQueue()
        stdio.StandardIO(Lines(lines))
        print("enter seconds for a job, or 'quit':", flush=True)
        number = 0
        while True:
            line = await lines.get()
            if line is None or line.lower() in ("quit", "exit"):
                break
            if not line:
                continue
            try:
                seconds = float(line)
            except ValueError:
                print('  "%s" is not a number' % line, flush=True)
                continue
            rtask = await computation.run_async(compute, Job(number, seconds), client)
            print("  job %d: %s seconds, task %s" % (number, seconds, rtask), flush=True)
            report(rtask, number)
            number += 1
        await computation.close(await_async=True)  # waits for the jobs still running
        await monitor.shutdown()
        print("done: %d jobs" % number, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
