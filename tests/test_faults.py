"""
Fault handling with real processes: silent nodes (SIGSTOP stands in for a cut
network on loopback) and silent schedulers.
"""

import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, Scheduler, Status

from .conftest import env_for_children
from .test_core import wait_for


def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


@pytest_twisted.ensureDeferred
async def test_silent_node_is_abandoned_after_missed_pulses(fresh_node):
    node = fresh_node(cpus=2)
    statuses = []
    scheduler = Scheduler(nodes=[node.location], secret=node.secret)
    comp = Computation([slow], pulse_interval=1, status_task=statuses.append)
    try:
        await comp.schedule(timeout=30)
        rtask = await comp.run(slow, 120)
        await wait_for(lambda: any(isinstance(s, dispycos.DispycosNodeAvailInfo) for s in statuses), timeout=10)
        node.kill(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(dispycos.TaskAbandoned):
            await rtask.result(timeout=30)
        elapsed = time.monotonic() - started
        assert elapsed < 20  # 5 missed pulses of 1 s, generously bounded
        codes = [s.status for s in statuses if isinstance(s, dispycos.DispycosStatus)]
        assert codes.count(Status.NodeAbandoned) == 1
        assert codes.count(Status.ServerAbandoned) == 2
        finished = [s.info for s in statuses if isinstance(s, dispycos.DispycosStatus) and s.status == Status.TaskFinished]
        assert len(finished) == 1 and isinstance(finished[0].exception, dispycos.TaskAbandoned)
    finally:
        node.kill(signal.SIGCONT)
        await comp.close()
        await scheduler.close()


CLIENT = r'''
import sys
from twisted.internet import task, defer
import dispycos

def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds

async def main(reactor):
    dispycos.Scheduler(nodes=[sys.argv[1]], secret=sys.argv[2])
    comp = dispycos.Computation([slow], pulse_interval=1)
    await comp.schedule(timeout=30)
    await comp.run(slow, 600)
    print("RUNNING", flush=True)
    await defer.Deferred()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


@pytest_twisted.ensureDeferred
async def test_silent_scheduler_releases_the_node(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), node.location, node.secret], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env_for_children(tmp_path), text=True)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        proc.send_signal(signal.SIGSTOP)
        # The node notices the silence and releases the computation, so another
        # client can use it.
        await wait_for(lambda: "silent for" in node.output(), timeout=30)
        scheduler = Scheduler(nodes=[node.location], secret=node.secret)
        comp = Computation([slow])
        try:
            await comp.schedule(timeout=30)
            assert await comp.run_result(slow, 0.1) == 0.1
        finally:
            await comp.close()
            await scheduler.close()
    finally:
        proc.kill()
        proc.wait()
