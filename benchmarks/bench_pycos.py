"""
pycos 4.12.2 (its own dispycos and dispycosnode) driver: one workload per
process, run by benchmarks/run.py with the anchors venv, inside a private
network namespace (``unshare -n``, only ``lo``): pycos discovers peers by UDP
broadcast to <broadcast>, which must never leave the machine. The node and the
client bind 127.0.0.1 and peer explicitly (``nodes=['127.0.0.1']``).

    unshare -n benchmarks/.anchors-venv/bin/python benchmarks/bench_pycos.py --lo-up --workload W2

prints one line ``BENCH-RESULT {json}``. W1: ``yield client.rtask(noop, i)``
one after another, then ``finish()`` of each (``yield rt()``); W5 and W5g are
the same measurement (pycos tasks are generator functions). pycos has no
W1g, W1rr, W1map or W7.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

# -- task functions (pycos ships their source: they must be self-contained) --------


def noop(i=None, task=None):
    return 0
    yield


def receiver(n, task=None):
    count = 0
    for _ in range(n):
        yield task.receive()
        count += 1
    return count


def blob_len(data, task=None):
    return len(data)
    yield


def cpu_task(n, task=None):
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x
    yield


# -- the node -----------------------------------------------------------------------


class Node:
    """pycos's dispycosnode (2 servers) on 127.0.0.1 as a child process, stopped by PID."""

    def __init__(self, workdir=None):
        self.dest = tempfile.mkdtemp(prefix="pycos-bench-node-", dir=workdir)
        cmd = [sys.executable, "-m", "pycos.dispycosnode", "-c", "2", "-i", "127.0.0.1", "--daemon",
               "--dest_path", self.dest]
        self._ready = threading.Event()
        self.lines = []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=self.dest)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:  # drain until the node exits
            self.lines.append(line)
            del self.lines[:-50]
            if b"dispycos node started at" in line:
                self._ready.set()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.001):  # bounded
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pycos dispycosnode did not start:\n" + b"".join(self.lines).decode("utf-8", "replace"))

    def pids(self):
        return [self.proc.pid] + common.descendants(self.proc.pid)

    def stop(self):
        common.stop_tree(self.proc, grace=10)
        shutil.rmtree(self.dest, ignore_errors=True)


# -- the workloads -------------------------------------------------------------------


def run_workload(args):
    import pycos
    import pycos.netpycos  # noqa: F401  (networked pycos)
    from pycos.dispycos import Client, Scheduler

    pycos.logger.setLevel(pycos.Logger.WARNING)
    w, size = args.workload, args.size
    extra = {}
    n_cpu = None
    if w in ("W5", "W5g"):
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"])
    data = b"\x5a" * (size["w4_mib"] * 2**20) if w == "W4" else None
    sched_dir = tempfile.mkdtemp(prefix="pycos-bench-sched-", dir=args.workdir)

    t_spawn = time.perf_counter()
    node = Node(workdir=args.workdir)
    try:
        node.wait_ready()
        if w == "MEM":
            extra["rss_mib_before_schedule"] = round(common.rss_of(node.pids())[0], 1)
        Scheduler(host="127.0.0.1", nodes=["127.0.0.1"], dest_path=sched_dir)

        def driver(task=None):
            client = Client([noop, receiver, blob_len, cpu_task])
            if (yield client.schedule()):
                raise RuntimeError("pycos: could not schedule the client")
            try:
                rt = yield client.rtask(noop)
                if not isinstance(rt, pycos.Task) or (yield rt()) != 0:
                    raise RuntimeError("pycos: first task failed: %r" % (rt,))
                if w == "W6":
                    return time.perf_counter() - t_spawn
                if w in ("W1", "W1a"):
                    n = size["w1_tasks"]
                    submit = client.rtask if w == "W1" else client.io_rtask
                    t = time.perf_counter()
                    rtasks = []
                    for i in range(n):  # pycos style: each submission answers once the task runs
                        rt = yield submit(noop, i)
                        if not isinstance(rt, pycos.Task):
                            raise RuntimeError("pycos: rtask failed: %r" % (rt,))
                        rtasks.append(rt)
                    extra["submit_seconds"] = time.perf_counter() - t
                    results = []
                    for rt in rtasks:
                        results.append((yield rt()))
                    dt = time.perf_counter() - t
                    assert results == [0] * n, results[:5]
                    extra["seconds"] = dt
                    return n / dt
                if w == "W2":
                    lat = []
                    for i in range(size["w2_warmup"] + size["w2_calls"]):
                        t = time.perf_counter()
                        rt = yield client.rtask(noop)
                        r = yield rt()
                        if i >= size["w2_warmup"]:
                            lat.append(time.perf_counter() - t)
                    assert r == 0, r
                    lat.sort()
                    extra.update(p90_ms=lat[int(len(lat) * 0.9)] * 1000, min_ms=lat[0] * 1000)
                    return common.p50(lat) * 1000
                if w == "W3":
                    n = size["w3_msgs"]
                    rt = yield client.io_rtask(receiver, n)
                    if not isinstance(rt, pycos.Task):
                        raise RuntimeError("pycos: rtask failed: %r" % (rt,))
                    t = time.perf_counter()
                    for i in range(n):
                        rt.send(i)
                    extra["send_loop_seconds"] = time.perf_counter() - t
                    count = yield rt()
                    dt = time.perf_counter() - t
                    assert count == n, count
                    extra["seconds"] = dt
                    return n / dt
                if w == "W4":
                    t = time.perf_counter()
                    rt = yield client.rtask(blob_len, data)
                    r = yield rt()
                    dt = time.perf_counter() - t
                    assert r == len(data), r
                    extra["seconds"] = dt
                    return size["w4_mib"] / dt
                if w in ("W5", "W5g"):  # cpu_task is a generator function: W5 is already W5g
                    k = size["w5_tasks"]
                    serial = common.serial_seconds(common.cpu_loop, n_cpu, k)  # (blocks pycos: nothing runs)
                    t = time.perf_counter()
                    rtasks = []
                    for _ in range(k):
                        rtasks.append((yield client.rtask(cpu_task, n_cpu)))
                    for rt in rtasks:
                        yield rt()
                    wall = time.perf_counter() - t
                    value, more = common.speedup(serial, common.cpu_loop, n_cpu, k, wall)
                    extra.update(more)
                    return value
                if w == "MEM":
                    yield task.sleep(size["mem_settle"])
                    mib, more = common.memory_report(node.pids())
                    extra.update(more)
                    return mib
                raise ValueError(w)
            finally:
                yield client.close(terminate=True)

        t = pycos.Task(driver)
        value = t.value()
        if value is None:
            raise RuntimeError("pycos driver failed (see log above)")
    finally:
        node.stop()
        try:
            pycos.Pycos.instance().terminate()
        except Exception:
            pass
        shutil.rmtree(sched_dir, ignore_errors=True)
    return value, extra


def main(argv=None):
    args = common.driver_args(argv)
    value, extra = run_workload(args)
    common.emit(args.workload, value, **extra)
    sys.stdout.flush()
    os._exit(0)  # pycos's threads may linger; every child is stopped already


if __name__ == "__main__":
    main()
