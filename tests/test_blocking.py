"""
The blocking API (dispycos.blocking) from plain scripts -- no Twisted code
in them -- run as real processes against a real LocalCluster or a node the
test started: the quick start, blocking task handles, bounded waits, calls
from the reactor's thread, interpreter exit without close(), the reaping of
a LocalCluster's node, and Ctrl-C (SIGINT to the script's process group).
"""

import json
import os
import re
import signal
import time

import psutil
import pytest

from .blocking_helpers import ROOT, Workdir, stop_group, wait_for_file
from .conftest import NodeProcess


@pytest.fixture
def workdir():
    w = Workdir()
    yield w
    w.cleanup()


def assert_clean(workdir):
    """Nothing the script started still runs, and the LocalCluster's files are gone."""
    assert workdir.wait_no_processes() == []
    assert workdir.leftovers() == ([], [])


def readme_block(title):
    """The first literal block (after C{::}) of the README section C{title}."""
    with open(os.path.join(ROOT, "README.rst")) as f:
        text = f.read()
    section = text.split("\n%s\n%s\n" % (title, "-" * len(title)), 1)[1]
    m = re.search(r"::\n\n((?:    .*\n|\n)+)", section)
    return "\n".join(line[4:] for line in m.group(1).splitlines())


def test_readme_quick_start_runs_as_a_plain_script(workdir):
    """The README's plain-Python quick start, as written there: a LocalCluster, no Twisted code."""
    code = readme_block("Plain Python")
    assert "twisted" not in code.lower() and "LocalCluster(" in code
    rc, out = workdir.run(code)
    assert rc == 0, out
    assert "49\n[0, 1, 4, 9, 16]\n" in out, out
    assert_clean(workdir)


SCHEDULER_SCRIPT = """
import sys
from dispycos.blocking import Computation, Scheduler

def square(n):
    return n * n

with Scheduler(nodes=[sys.argv[1]], secret=sys.argv[2]), Computation([square]) as comp:
    print(comp.run_result(square, 7))
    print(comp.run_results(square, range(5)))
    print(list(comp.map(square, range(3))))
    print(comp.nodes())
"""


def test_scheduler_of_a_node_the_test_started(workdir):
    node = NodeProcess(cpus=2)
    try:
        rc, out = workdir.run(SCHEDULER_SCRIPT, node.location, node.secret)
        assert rc == 0, out
        assert out.splitlines() == ["49", "[0, 1, 4, 9, 16]", "[0, 1, 4]", "['127.0.0.1']"], out
        assert node.proc.poll() is None  # the script left the node alone
    finally:
        node.stop()
    assert_clean(workdir)


HANDLES_SCRIPT = """
import json, os, sys
import dispycos
from dispycos.blocking import Computation, LocalCluster, ReactorThreadError, RemoteTask, Task, call

def square(n):
    return n * n

def echo(reply_to, task=None):
    msg = yield task.receive(timeout=60)
    reply_to.send(("echo", msg))
    return msg.upper()

def plain_echo(reply_to, task=None):
    msg = task.receive(60)          # a plain function: blocking calls in its thread
    reply_to.send(msg * 2)
    return os.getpid()

def slow(seconds, task=None):
    yield task.sleep(seconds)
    return "slept"

def fails(n):
    raise ValueError("bad %d" % n)

import threading

def reactor_threads():
    return [t for t in threading.enumerate() if t.name == "dispycos-reactor"]

out = {}
statuses = []
out["reactor_threads"] = [len(reactor_threads())]       # none yet: started on first use
with LocalCluster(cpus=2) as cluster:
    out["reactor_threads"].append(len(reactor_threads()))
    out["cluster_is_started"] = cluster.pid is not None and cluster.node_location is not None
    with Computation([square, echo, plain_echo, slow, fails], status_task=statuses.append) as comp:
        out["run_result"] = comp.run_result(square, 7)
        out["run_results"] = comp.run_results(square, [1, 2, (3,)])
        out["map"] = list(comp.map(square, range(5)))
        out["map_unordered"] = sorted(comp.map(square, range(5), ordered=False))
        out["nodes"] = comp.nodes(timeout=30)
        servers = comp.servers()
        out["servers"] = len(servers)
        out["run_result_at"] = comp.run_result_at(servers[0], square, 3)
        out["rtask_alias"] = comp.rtask(square, 4).result()

        # A local mailbox (a blocking Task) as the reply address of remote tasks.
        me = Task()
        rt = comp.run(echo, me)
        out["handle"] = type(rt).__name__
        out["deliver"] = rt.deliver("hello", timeout=30)
        out["receive"] = me.receive(timeout=30)
        out["result"] = rt.result(timeout=30)
        out["finish"] = rt.finish()
        rt = comp.run_at(servers[1], plain_echo, me)
        rt.send("ab")
        out["plain_receive"] = me.receive(timeout=30)
        out["plain_ran_elsewhere"] = rt.result() != os.getpid()
        try:
            me.receive(timeout=0.2)
        except dispycos.TimeoutError:
            out["receive_timeout"] = True
        out["receive_alarm"] = me.receive(timeout=0.1, alarm_value="none")
        me.terminate()

        # Bounded waits: result(timeout=) leaves the task running; terminate() ends it.
        rt = comp.run_async(slow, 120)
        try:
            rt.result(timeout=0.5)
        except dispycos.TimeoutError as e:
            out["result_timeout"] = isinstance(e, TimeoutError)
        rt.terminate(timeout=30)
        try:
            rt.result()
        except dispycos.TaskTerminated:
            out["terminated"] = True

        try:
            comp.run_result(fails, 3)
        except dispycos.RemoteTaskError as e:
            out["error"] = [type(e.exception).__name__, str(e.exception)]

        # In the reactor's thread a blocking call would deadlock: it raises at once.
        try:
            call(comp.nodes)  # fine: runs the Deferred API there
            call(lambda: comp.servers())
        except ReactorThreadError as e:
            out["reactor_thread"] = "reactor's own thread" in str(e)

        # The map iterator's close() ends the map: its tasks are terminated.
        it = comp.map(slow, [0] + [119] * 3)
        out["map_first"] = next(it)
        it.close()
        out["map_closed"] = list(it)

    # call_timeout bounds every wait; a run_result that times out terminates its task.
    comp = Computation([slow], call_timeout=1, status_task=statuses.append)
    comp.schedule(timeout=60)   # (its servers are new processes: they may take longer than call_timeout)
    with comp:
        try:
            comp.run_result(slow, 121)
        except dispycos.TimeoutError:
            out["call_timeout"] = True
        out["after_timeout"] = comp.run_result(slow, 0)
    out["closed"] = comp.close() is None    # (again: nothing to do)
    try:
        comp.run_result(slow, 0)
    except dispycos.DispycosError as e:
        out["run_after_close"] = type(e).__name__

out["reactor_threads"].append(len(reactor_threads()))  # one, shared by every object, for the whole run
out["reactor_daemon"] = all(t.daemon for t in reactor_threads())
finished = [s.info for s in statuses if getattr(s, "status", None) == dispycos.Status.TaskFinished]
out["terminated_tasks"] = sorted(str(i.args) for i in finished if isinstance(i.exception, dispycos.TaskTerminated))
print(json.dumps(out, sort_keys=True))
"""


def test_blocking_handles_and_bounded_waits(workdir):
    rc, out = workdir.run(HANDLES_SCRIPT)
    assert rc == 0, out
    got = json.loads(out.splitlines()[-1])
    assert got == {
        "reactor_threads": [0, 1, 1], "reactor_daemon": True, "cluster_is_started": True,
        "run_result": 49, "run_results": [1, 4, 9], "map": [0, 1, 4, 9, 16], "map_unordered": [0, 1, 4, 9, 16],
        "nodes": ["127.0.0.1"], "servers": 2, "run_result_at": 9, "rtask_alias": 16,
        "handle": "RemoteTask", "deliver": 1, "receive": ["echo", "hello"], "result": "HELLO", "finish": "HELLO",
        "plain_receive": "abab", "plain_ran_elsewhere": True, "receive_timeout": True, "receive_alarm": "none",
        "result_timeout": True, "terminated": True,
        "error": ["ValueError", "bad 3"],
        "reactor_thread": True,
        "map_first": "slept", "map_closed": [],
        "call_timeout": True, "after_timeout": "slept", "run_after_close": "ComputationClosed",
        "closed": True,
        # The slow task of result(timeout=) (terminated by hand), the map's and the timed-out run_result's.
        "terminated_tasks": got["terminated_tasks"],
    }, out
    # terminate() (120 s), the closed map (119 s; however many of its items had started) and the
    # run_result that call_timeout ended (121 s).
    assert {"(119,)", "(120,)", "(121,)"} == set(got["terminated_tasks"]), got
    assert_clean(workdir)


EXIT_SCRIPT = """
import os
from dispycos.blocking import Computation, LocalCluster

def square(n):
    return n * n

def slow(seconds, task=None):
    yield task.sleep(seconds)

# A stopped cluster's node was reaped (no SIGCHLD reaches the reactor's thread).
for _ in range(2):
    cluster = LocalCluster(cpus=1).start()
    pid = cluster.pid
    cluster.stop()
    print("reaped", not os.path.exists("/proc/%d" % pid))

# Left open: a cluster, a computation, a running task. Interpreter exit closes them.
cluster = LocalCluster(cpus=2).start()
comp = Computation([square, slow])
comp.schedule()
rt = comp.run(slow, 300)
print(comp.run_result(square, 3))
"""


def test_interpreter_exit_closes_what_was_left_open(workdir):
    rc, out = workdir.run(EXIT_SCRIPT)
    assert rc == 0, out
    assert out.splitlines()[:3] == ["reaped True", "reaped True", "9"], out
    assert "Traceback" not in out and "Unhandled" not in out, out
    assert_clean(workdir)


SIGINT_SCRIPT = """
import os, signal, sys, time
# Ctrl-C as at a terminal, even when the test runner was started in the background by a shell
# (which starts it, and so this script, with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
import dispycos
from dispycos.blocking import Computation, LocalCluster, Task

def long_task(marker, seconds):
    open(marker, "w").close()
    try:
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(0.05)
        return "finished"
    except BaseException as e:
        with open(marker + ".end", "w") as f:
            f.write(type(e).__name__)
        raise

def waiter(task=None):
    msg = yield task.receive()
    return msg

def square(n):
    return n * n

marker = sys.argv[1]
statuses = []
with LocalCluster(cpus=1) as cluster, Computation([long_task, waiter, square], status_task=statuses.append) as comp:
    print("node", cluster.pid, os.getpgid(cluster.pid) != os.getpgid(0))
    # 1. run_result: interrupted, its task is terminated.
    try:
        comp.run_result(long_task, marker + "-1", 30)
        sys.exit("run_result was not interrupted")
    except KeyboardInterrupt:
        print("interrupted run_result")
    deadline = time.time() + 20
    while not os.path.exists(marker + "-1.end") and time.time() < deadline:
        time.sleep(0.05)
    with open(marker + "-1.end") as f:
        print("server task ended by", f.read())
    print("next", comp.run_result(square, 5))   # one server: it is free again

    # 2. result(): interrupted, it only stops waiting; the task goes on.
    rt = comp.run_async(waiter)
    try:
        open(marker + "-2", "w").close()
        rt.result()
        sys.exit("result() was not interrupted")
    except KeyboardInterrupt:
        print("interrupted result")
    rt.send("still there")
    print("then", rt.result(timeout=30))

    # 3. run_results: interrupted, its tasks are terminated.
    try:
        comp.run_results(long_task, [(marker + "-3", 30), (marker + "-4", 30)])
        sys.exit("run_results was not interrupted")
    except KeyboardInterrupt:
        print("interrupted run_results")
    deadline = time.time() + 20
    while not os.path.exists(marker + "-3.end") and time.time() < deadline:
        time.sleep(0.05)
    with open(marker + "-3.end") as f:
        print("server task ended by", f.read())
    print("next", comp.run_result(square, 6))

    # 4. map: interrupted, its tasks are terminated.
    try:
        for r in comp.map(long_task, [(marker + "-5", 30), (marker + "-6", 30)]):
            sys.exit("map was not interrupted")
    except KeyboardInterrupt:
        print("interrupted map")
    deadline = time.time() + 20
    while not os.path.exists(marker + "-5.end") and time.time() < deadline:
        time.sleep(0.05)
    with open(marker + "-5.end") as f:
        print("server task ended by", f.read())
    print("next", comp.run_result(square, 7))

    # 5. receive() of a local mailbox: interrupted, it takes nothing out.
    me = Task()
    try:
        open(marker + "-7", "w").close()
        me.receive()
        sys.exit("receive() was not interrupted")
    except KeyboardInterrupt:
        print("interrupted receive")
    me.send("for the next receive")
    print("then", me.receive(timeout=30))
    me.terminate()
    done = [s.info for s in statuses if getattr(s, "status", None) == dispycos.Status.TaskFinished]
    print("terminated", sum(isinstance(i.exception, dispycos.TaskTerminated) for i in done) >= 3)
print("exit")
"""


def test_ctrl_c_interrupts_a_blocking_call_and_the_computation_goes_on(workdir):
    marker = os.path.join(workdir.path, "started")
    proc = workdir.start(SIGINT_SCRIPT, marker)
    try:
        node_line = proc.stdout.readline()
        assert node_line.startswith("node ") and node_line.split()[2] == "True", node_line
        node_pid = int(node_line.split()[1])
        lines = []
        for name in ("-1", "-2", "-3", "-5", "-7"):
            wait_for_file(marker + name, proc)
            if name in ("-2", "-7"):
                time.sleep(0.5)  # (the file is written just before result() is called: let it start waiting)
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C or Jupyter's interrupt does
            while True:  # (what it printed since the last interrupt, up to the line of this one)
                line = proc.stdout.readline()
                lines.append(line)
                if not line or line.startswith("interrupted"):
                    break
            assert line.startswith("interrupted"), "".join(lines) + proc.stdout.read()
            assert psutil.pid_exists(node_pid)  # the node, in a session of its own, was not hit
        # Not communicate(): it reads the pipe itself, and lines readline() already took into the
        # file object's buffer would be lost. (What is left is a few lines: the pipe cannot fill.)
        proc.wait(timeout=120)
        out = "".join(lines) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            stop_group(proc)
    assert proc.returncode == 0, out
    assert out.splitlines() == ["interrupted run_result", "server task ended by TaskTerminated", "next 25",
                                "interrupted result", "then still there",
                                "interrupted run_results", "server task ended by TaskTerminated", "next 36",
                                "interrupted map", "server task ended by TaskTerminated", "next 49",
                                "interrupted receive", "then for the next receive",
                                "terminated True", "exit"], out
    assert_clean(workdir)
