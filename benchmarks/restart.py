"""
Server restart latency: how long a node takes to replace a server, from the
old process's end to its successor accepting connections on the same port.

    .venv/bin/python benchmarks/restart.py [--trials 5] [--no_fork]

Two cases on a node of 2 servers: after a computation (the node restarts its
servers when a computation is closed) and after a crash (SIGKILL of one
server). A poller thread watches each server's PID (gone: it exited or is a
zombie) and then connects to its port every 0.5 ms. Prints one line
``BENCH-RESULT {json}`` with the medians in ms (SPEC 6.6 target: <= 50 ms).
"""

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_dispycos  # noqa: E402
import common  # noqa: E402

import psutil  # noqa: E402


def where():
    return os.getpid()


def servers(node):
    """{pid: listening port} of the node's server processes."""
    out = {}
    for pid in common.descendants(node.proc.pid):
        try:
            proc = psutil.Process(pid)
            ports = [c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
        if ports:
            out[pid] = ports[0]
    return out


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def accepts(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.05)
    except OSError:
        return False
    try:
        return s.getsockname() != s.getpeername()  # not a TCP self-connection
    finally:
        s.close()


def watch(targets, out, deadline=30.0):
    """For each (pid, port): ms from the pid gone to the port accepting again."""
    end = time.monotonic() + deadline
    dead = {}
    while len(out) < len(targets) and time.monotonic() < end:
        for pid, port in targets.items():
            if pid in out:
                continue
            if pid not in dead:
                # Gone: no process (or a zombie) and its listening socket closed (a
                # zombie leader's other threads may still hold it a moment).
                if gone(pid) and not accepts(port):
                    dead[pid] = time.perf_counter()
            elif accepts(port):
                out[pid] = (time.perf_counter() - dead[pid]) * 1000
        time.sleep(0.0005)


async def main(reactor, args):
    from twisted.internet import threads

    from dispycos import Computation, Scheduler

    if args.no_fork:
        os.environ["DISPYCOS_NO_FORK"] = "1"
    node = bench_dispycos.Node(2)
    results = {"after_computation_ms": [], "after_kill_ms": []}
    sched = None
    try:
        location = node.wait_ready()
        sched = Scheduler(nodes=[location], secret=node.secret, discover=False)
        for _ in range(args.trials):
            comp = Computation([where])
            await comp.schedule(timeout=60)
            await comp.run_result(where)
            # After a crash: SIGKILL one server while the computation holds the node.
            targets = dict([next(iter(servers(node).items()))])
            out = {}
            watcher = threading.Thread(target=watch, args=(targets, out), daemon=True)
            watcher.start()
            os.kill(next(iter(targets)), signal.SIGKILL)
            await threads.deferToThread(watcher.join)
            results["after_kill_ms"] += list(out.values())
            # After a computation: closing it restarts every server.
            targets, out = servers(node), {}
            watcher = threading.Thread(target=watch, args=(targets, out), daemon=True)
            watcher.start()
            await comp.close(terminate=True)
            await threads.deferToThread(watcher.join)
            results["after_computation_ms"] += list(out.values())
    finally:
        if sched is not None:
            await sched.close()
        node.stop()
    summary = {k: round(statistics.median(v), 1) if v else None for k, v in results.items()}
    summary["samples"] = {k: [round(x, 1) for x in v] for k, v in results.items()}
    summary["forked"] = not args.no_fork
    print("BENCH-RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    from twisted.internet import defer, task

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--no_fork", action="store_true", help="servers spawned (the node's --no_fork)")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
