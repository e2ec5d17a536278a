"""
comp.executor(): a concurrent.futures.Executor on a blocking computation,
used by a plain script through the standard library's own functions
(as_completed, wait) against a real LocalCluster.
"""

import json

import pytest

from .blocking_helpers import Workdir
from .test_blocking import assert_clean


@pytest.fixture
def workdir():
    w = Workdir()
    yield w
    w.cleanup()


EXECUTOR_SCRIPT = """
import concurrent.futures as cf
import functools, json, os
import dispycos
from dispycos.blocking import Computation, LocalCluster

def square(n):
    return n * n

def add(a, b, scale=1):
    return (a + b) * scale

def where():
    return os.getpid()

def fails(n):
    raise KeyError(n)

def slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds

out = {}
with LocalCluster(cpus=2), Computation([square, add, where, fails, slow]) as comp:
    ex = comp.executor()
    out["is_executor"] = isinstance(ex, cf.Executor)
    futures = [ex.submit(square, i) for i in range(10)]
    out["as_completed"] = sorted(f.result() for f in cf.as_completed(futures, timeout=60))
    done, pending = cf.wait([ex.submit(add, 1, 2, scale=10), ex.submit(add, 3, b=4)], timeout=60)
    out["wait"] = [sorted(f.result() for f in done), len(pending)]
    out["partial"] = ex.submit(functools.partial(add, 5), 6).result(timeout=60)
    out["in_servers"] = os.getpid() not in {ex.submit(where).result() for _ in range(3)}
    out["map"] = list(ex.map(add, range(5), range(5)))
    out["map_chunks"] = list(ex.map(square, range(7), chunksize=3))
    f = ex.submit(fails, 1)
    try:
        f.result(timeout=60)
    except dispycos.RemoteTaskError as e:
        out["exception"] = [type(f.exception()).__name__, type(e.exception).__name__]
    # Two servers busy; the third call waits for a server: cancel_futures takes it off the queue.
    running = [ex.submit(slow, 3), ex.submit(slow, 3)]
    cf.wait(running, timeout=0.5)
    queued = ex.submit(slow, 0)
    ex.shutdown(wait=True, cancel_futures=True)
    out["shutdown"] = [[f.result() for f in running], queued.cancelled()]
    try:
        ex.submit(square, 1)
    except RuntimeError:
        out["submit_after_shutdown"] = True
    with comp.executor() as ex2:                       # a context manager: shutdown(wait=True) at the end
        f = ex2.submit(slow, 0.2)
    out["with"] = [f.done(), f.result()]
    ex3 = comp.executor()
    f = ex3.submit(slow, 120)
    cf.wait([f], timeout=0.5)
    f.terminate()
    try:
        f.result(timeout=30)
    except dispycos.TaskTerminated:
        out["terminate"] = True
    try:
        list(ex3.map(slow, [0, 4], timeout=1))
    except cf.TimeoutError:
        out["map_timeout"] = True
    ex3.shutdown()
print(json.dumps(out, sort_keys=True))
"""


def test_executor_submit_map_shutdown_as_completed(workdir):
    rc, out = workdir.run(EXECUTOR_SCRIPT)
    assert rc == 0, out
    got = json.loads(out.splitlines()[-1])
    assert got == {
        "is_executor": True,
        "as_completed": [i * i for i in range(10)],
        "wait": [[7, 30], 0],
        "partial": 11,
        "in_servers": True,
        "map": [0, 2, 4, 6, 8],
        "map_chunks": [0, 1, 4, 9, 16, 25, 36],
        "exception": ["RemoteTaskError", "KeyError"],
        "map_timeout": True,
        "shutdown": [[3, 3], True],
        "submit_after_shutdown": True,
        "with": [True, 0.2],
        "terminate": True,
    }, out
    assert_clean(workdir)
