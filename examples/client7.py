"""
Scheduling jobs yourself, from status messages.

The computation's ``status_task`` (a local task here; any callable works too)
gets every status message of the scheduler. When a server is initialized it
starts a job on exactly that server (``run_at(location, ...)``); when a job
finishes (``TaskFinished``, whose info carries the task, its result or its
exception) it starts the next one at the same place, until N jobs ran. Each
job just sleeps a little and returns how long it slept.

Run it with a private cluster started for the occasion (two servers)::

    python examples/client7.py [N]          # N jobs, 10 by default

or against nodes that are already running (``dispycosnode``)::

    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client7.py [N]
"""

import random
import sys

from twisted.internet import defer, task

import dispycos
from dispycos import DispycosStatus, Status


def rtask_proc(n, task=None):
    """Runs on a server: sleep n seconds, return n."""
    yield task.sleep(n)
    return n


def status_proc(computation, njobs, task=None):
    """Runs in the client: place jobs as servers come and jobs end."""
    started = [0]
    done = 0

    def submit(location):
        if started[0] >= njobs:
            return
        started[0] += 1
        n = round(random.uniform(0.2, 1.0), 2)
        d = computation.run_at(location, rtask_proc, n)
        d.addCallback(lambda rtask: print("  rtask_proc started at %s with %.2f" % (rtask.location, n), flush=True))
        d.addErrback(lambda f: task.send(("not started", location, n, f.getErrorMessage())))

    while done < njobs:
        msg = yield task.receive()
        if isinstance(msg, tuple):  # from submit: the job could not start
            _, location, n, why = msg
            print("  ** rtask_proc at %s with %.2f not started: %s" % (location, n, why), flush=True)
            done += 1
            continue
        if not isinstance(msg, DispycosStatus):
            continue  # DispycosNodeAvailInfo every pulse: not used here
        if msg.status == Status.ServerInitialized:
            submit(msg.info)
        elif msg.status == Status.TaskFinished:
            info = msg.info
            done += 1
            if info.exception is None:
                print("      rtask_proc at %s finished with %.2f" % (info.task.location, info.result), flush=True)
            else:
                print("      rtask_proc at %s failed: %s" % (info.task.location, info.exception), flush=True)
            submit(info.task.location)
        elif msg.status == Status.ComputationClosed:
            break
    return done


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([rtask_proc])
        # Set before schedule(): the status task sees the servers being initialized.
        computation.status_task = dispycos.Task(status_proc, computation, njobs)
        await computation.schedule(timeout=60)
        done = await computation.status_task.result()
        await computation.close()
        print("done: %d jobs" % done, flush=True)


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
