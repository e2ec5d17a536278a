"""
A computation with the browser monitor, run as a child process by
tests/test_httpd_browser.py (a sync Playwright call would block an
in-process reactor).

    python tests/httpd_cluster_proc.py --node HOST:PORT [--node ...] --secret S [--long N] [--poll SEC]

(without --node it starts a dispycos.LocalCluster of its own).

Prints C{PORT <port>} once the monitor serves and the computation is
scheduled, then C{STARTED <task id> <args>} for each long-running task.
Commands on stdin, one per line:

    short SECONDS LABEL   run a task that sleeps SECONDS (prints STARTED, then FINISHED)
    quit                  close everything and exit (also on end of input)

Whenever a task ends it prints C{FINISHED <task id> ok <result>},
C{TERMINATED <task id>} (its result() errbacked with TaskTerminated) or
C{FAILED <task id> <exception type>}.
"""

import argparse
import sys

from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver

import dispycos
import dispycos.httpd


def long_task(index, label, seconds=600, task=None):
    yield task.sleep(seconds)
    return "%s done" % label


def short_task(seconds, label, task=None):
    yield task.sleep(seconds)
    return "%s done" % label


def say(*words):
    print(*words, flush=True)


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, handler):
        self.handler = handler

    def lineReceived(self, line):
        self.handler(line.decode().strip())

    def connectionLost(self, reason):
        self.handler("quit")


def watch(rtask):
    def ok(result):
        say("FINISHED", str(rtask), "ok", result)

    def failed(f):
        if f.check(dispycos.TaskTerminated):
            say("TERMINATED", str(rtask))
        else:
            say("FAILED", str(rtask), f.type.__name__)

    rtask.result().addCallbacks(ok, failed)


async def main(reactor, options):
    if options.node:
        scheduler = dispycos.Scheduler(nodes=options.node, secret=options.secret, discover=False)
        cluster = None
    else:
        cluster = await dispycos.LocalCluster(cpus=2).start()
        scheduler = None
    comp = dispycos.Computation([long_task, short_task], pulse_interval=1)
    monitor = dispycos.httpd.HTTPServer(comp, port=options.port, poll_sec=options.poll)
    done = defer.Deferred()
    closing = []

    async def close():
        if closing:
            return
        closing.append(True)
        await comp.close(terminate=True)
        await monitor.shutdown(wait=False)
        if scheduler is not None:
            await scheduler.close()
        if cluster is not None:
            await cluster.stop()
        say("CLOSED")
        done.callback(None)

    def command(line):
        words = line.split()
        if not words:
            return
        if words[0] == "quit":
            defer.ensureDeferred(close())
        elif words[0] == "short" and not closing:
            async def run():
                rtask = await comp.run_async(short_task, float(words[1]), words[2] if len(words) > 2 else "short")
                say("STARTED", str(rtask), words[1])
                watch(rtask)

            defer.ensureDeferred(run()).addErrback(lambda f: say("ERROR", f.getErrorMessage()))

    try:
        await comp.schedule(timeout=60)
        for i in range(options.long):
            rtask = await comp.run_async(long_task, i, "job-%d" % i, seconds=600)
            say("STARTED", str(rtask), "job-%d" % i)
            watch(rtask)
        say("PORT", monitor.port)
        stdio.StandardIO(Commands(command))
    except Exception as e:
        say("ERROR", e)
        await close()
    await done


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", action="append", default=[])
    parser.add_argument("--secret", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--poll", type=int, default=5)
    parser.add_argument("--long", type=int, default=3)
    opts = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, opts)))
    sys.exit(0)
