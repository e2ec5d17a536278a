"""
``client1.py`` with the browser monitor: the same jobs on the servers of a
cluster, watched at the address the monitor prints
(``http://127.0.0.1:8181/?token=...``) while they run.

The monitor (``dispycos.httpd.HTTPServer``) is created before
``schedule()`` so it hears of every node, server and task. Each
``Computation.run`` waits until a server is free to take another CPU task;
the Cluster page shows the task counts climbing, the Server pages the jobs
running with their arguments. After ``close()`` the monitor answers with the
final state until ``shutdown()``.

    python examples/client1_monitor.py [N]          # N jobs, 10 by default
    DISPYCOS_NODES=host:port DISPYCOS_SECRET=... python examples/client1_monitor.py [N]

``DISPYCOS_HTTP_PORT`` picks another port for the monitor (0: any free port).
"""

import os
import random
import sys

from twisted.internet import defer, task

import dispycos
import dispycos.httpd


def compute(n, task=None):
    """Runs on a server: pretend to work for n seconds."""
    yield task.sleep(n)
    return n


async def main(reactor):
    njobs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    port = int(os.environ.get("DISPYCOS_HTTP_PORT", "8181"))
    async with dispycos.default_cluster(cpus=2):
        computation = dispycos.Computation([compute])
        monitor = dispycos.httpd.HTTPServer(computation, port=port)
        await computation.schedule(timeout=60)
        for i in range(njobs):
            rtask = await computation.run(compute, round(random.uniform(1, 3), 2))
            print("  job %d processed by %s" % (i, rtask.location), flush=True)
        await computation.close()  # waits for the jobs that still run
        status = monitor.cluster_status(history=False)
        print("done: %d jobs (monitor: %d submitted, %d done)"
              % (njobs, status["tasks_submitted"], status["tasks_done"]), flush=True)
        await monitor.shutdown()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
