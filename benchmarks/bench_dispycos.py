"""
dispycos driver: one workload per process, run by benchmarks/run.py with this
repository's virtualenv. A fresh node (2 servers) is started for the workload
as tests/conftest.py does (``python -m dispycos.scripts -c 2 -i 127.0.0.1
--tcp_ports 0 ...``, stopped by PID), with a private Scheduler in this process.

    python benchmarks/bench_dispycos.py --workload W2 [--quick]

prints one line ``BENCH-RESULT {json}``.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

import common  # noqa: E402

# -- task functions (this is __main__: dispycos ships them by value) ------------------


def noop(task=None):
    """A no-op generator task (pycos style: runs on the server's reactor)."""
    return 0
    yield  # noqa: unreachable - makes this a generator function


def plain_noop():
    """A no-op plain function (runs in a worker thread of the server)."""
    return 0


def receiver(n, task=None):
    """Receive C{n} messages; return how many arrived."""
    count = 0
    for _ in range(n):
        yield task.receive()
        count += 1
    return count


def cpu_task(n):
    """The W5 body: a pure Python loop (a plain function: runs in a worker thread)."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


# -- the node -----------------------------------------------------------------------


class Node:
    """A dispycosnode child process (2 servers) on 127.0.0.1, stopped by PID."""

    def __init__(self, cpus=2, workdir=None):
        self.secret = secrets.token_hex(8)
        self.dest = tempfile.mkdtemp(prefix="dispycos-bench-node-", dir=workdir)
        env = dict(os.environ)
        env["DISPYCOS_SECRET"] = self.secret
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        cmd = [sys.executable, "-m", "dispycos.scripts", "-c", str(cpus), "-i", "127.0.0.1", "--tcp_ports", "0",
               "--dest_path", self.dest, "--daemon"]
        self.log = open(os.path.join(self.dest, "node.log"), "wb")
        self._ready = threading.Event()
        self.location = None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=self.dest)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        # "dispycosnode NAME ready at HOST:PORT with N servers"; keep draining afterwards.
        for line in self.proc.stdout:
            if not self._ready.is_set() and b" ready at " in line:
                self.location = line.split(b" ready at ", 1)[1].split()[0].decode()
                self._ready.set()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.001):  # bounded
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dispycosnode did not start:\n" + self.output())
        return self.location

    def output(self):
        try:
            self.log.flush()
            with open(os.path.join(self.dest, "node.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")[-3000:]
        except OSError:
            return ""

    def pids(self):
        return [self.proc.pid] + common.descendants(self.proc.pid)

    def stop(self):
        common.stop_tree(self.proc, grace=15)
        self.log.close()
        shutil.rmtree(self.dest, ignore_errors=True)


# -- the workloads -------------------------------------------------------------------


async def session(node, components):
    from dispycos import Computation, Scheduler

    sched = Scheduler(nodes=[node.location], secret=node.secret)
    comp = Computation(components)
    await comp.schedule(timeout=60)
    return sched, comp


async def close(sched, comp):
    try:
        await comp.close(terminate=True)
    finally:
        await sched.close()


async def run_workload(args, reactor):
    from twisted.internet import defer

    # What the driver uses is imported before the clock starts, as the anchors' drivers do
    # (dispycos/__init__ imports its client side lazily).
    from dispycos import Computation, Scheduler  # noqa: F401

    w, size = args.workload, args.size
    extra = {}
    serial = None
    if w == "W5":
        n = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
        serial = common.serial_seconds(cpu_task, n, size["w5_tasks"])
    t_spawn = time.perf_counter()
    node = _state["node"] = Node(workdir=args.workdir)
    sched = comp = None
    try:
        node.wait_ready()
        if w == "MEM":
            extra["rss_mib_before_schedule"] = round(common.rss_of(node.pids())[0], 1)
        sched, comp = await session(node, [noop, plain_noop, receiver, cpu_task])
        first = await comp.run_result(noop)
        assert first == 0, first
        prof = Profiling(node, w)  # does nothing unless $BENCH_PROFILE_DIR is set
        if w == "W6":
            value = time.perf_counter() - t_spawn
        elif w in ("W1", "W1a"):
            n = size["w1_tasks"]
            run = comp.run if w == "W1" else comp.run_async
            t, cpu = time.perf_counter(), time.process_time()
            rtasks = await defer.gatherResults([run(noop) for _ in range(n)], consumeErrors=True)
            t_submitted = time.perf_counter() - t
            results = await defer.gatherResults([r.result() for r in rtasks], consumeErrors=True)
            dt = time.perf_counter() - t
            assert results == [0] * n
            value = n / dt
            extra.update(seconds=dt, submit_seconds=t_submitted, client_cpu_seconds=time.process_time() - cpu)
        elif w == "W2":
            lat = []
            for i in range(size["w2_warmup"] + size["w2_calls"]):  # bounded
                t = time.perf_counter()
                r = await comp.run_result(noop)
                if i >= size["w2_warmup"]:
                    lat.append(time.perf_counter() - t)
            assert r == 0
            value = common.p50(lat) * 1000
            lat.sort()
            extra.update(p90_ms=lat[int(len(lat) * 0.9)] * 1000, min_ms=lat[0] * 1000)
            # the same with a plain function (worker thread on the server), for information
            lat = []
            for i in range(size["w2_warmup"] + size["w2_calls"] // 2):
                t = time.perf_counter()
                await comp.run_result(plain_noop)
                if i >= size["w2_warmup"]:
                    lat.append(time.perf_counter() - t)
            extra["plain_fn_p50_ms"] = common.p50(lat) * 1000
        elif w == "W3":
            n = size["w3_msgs"]
            rtask = await comp.run_async(receiver, n)
            t = time.perf_counter()
            for i in range(n):
                rtask.send(i)
            t_sent = time.perf_counter() - t
            count = await rtask.result(timeout=300)
            dt = time.perf_counter() - t
            assert count == n, count
            value = n / dt
            extra.update(seconds=dt, send_loop_seconds=t_sent)
        elif w == "W4":
            mib = size["w4_mib"]
            data = b"\x5a" * (mib * 2**20)
            t = time.perf_counter()
            r = await comp.run_result(len, data)
            dt = time.perf_counter() - t
            assert r == len(data), r
            value = mib / dt
            extra["seconds"] = dt
        elif w == "W5":
            k = size["w5_tasks"]
            t = time.perf_counter()
            results = await defer.gatherResults([comp.run_result(cpu_task, n) for _ in range(k)], consumeErrors=True)
            wall = time.perf_counter() - t
            assert len(results) == k
            value = serial / wall
            extra.update(serial_seconds=serial, wall_seconds=wall, cpu_iters=n)
        elif w == "MEM":
            await sleep(reactor, size["mem_settle"])
            mib, detail = common.rss_of(node.pids())
            value = mib
            extra.update(processes=detail, pss_mib=common.pss_total(detail))
        else:
            raise ValueError(w)
        prof.stop()
    finally:
        if comp is not None:
            await close(sched, comp)
        node.stop()
    return value, extra


class Profiling:
    """
    With $BENCH_PROFILE_DIR set (see profile_dispycos.py): cProfile of this
    process and py-spy ($BENCH_PYSPY) on the node and its servers, from after
    the warm-up task to the end of the measurement.
    """

    def __init__(self, node, workload):
        self.dir = os.environ.get("BENCH_PROFILE_DIR")
        self.spies = []
        self.profile = None
        if not self.dir:
            return
        import cProfile

        self.workload = workload
        pyspy = os.environ.get("BENCH_PYSPY")  # unset: profile_dispycos.py found no py-spy
        for i, pid in enumerate([os.getpid()] + node.pids() if pyspy else []):
            role = "client" if i == 0 else "node" if i == 1 else "server%d" % (i - 1)
            out = os.path.join(self.dir, "%s-%s.pyspy.txt" % (workload, role))
            self.spies.append(subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                                                "--nonblocking", "--output", out], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        if self.spies:
            time.sleep(1.0)  # let py-spy attach
        self.profile = cProfile.Profile()
        self.profile.enable()

    def stop(self):
        if self.profile is None:
            return
        import signal

        self.profile.disable()
        self.profile.dump_stats(os.path.join(self.dir, "%s-client.pstats" % self.workload))
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        self.profile = None


#: What the watchdog needs to report and clean up.
_state = {"node": None}
#: Seconds a workload may take in this driver before the watchdog ends it.
WATCHDOG = {"full": 60, "quick": 40}


def watchdog(reactor, seconds):
    """
    If the workload has not finished after C{seconds}, describe the
    connections (requests without an answer, unparsed bytes, flow-control
    state) on stderr, stop the node and exit: a hang becomes a clear failure.
    """

    def fire():
        try:
            from dispycos.runtime import current_runtime

            rt = current_runtime(create=False)
            sys.stderr.write("WATCHDOG: workload still running after %s s (hung?)\n" % seconds)
            for loc, link in (rt.links.items() if rt is not None else ()):
                p = link.proto
                if p is None:
                    continue
                sys.stderr.write("  link to %s: connected=%s, requests without answer=%d, unparsed bytes received=%d, "
                                 "paused=%s\n" % (loc, p.connected, len(getattr(p, "_outstandingRequests", {})),
                                                   len(getattr(p, "_unprocessed", b"")), getattr(p, "paused", None)))
            sys.stderr.flush()
        finally:
            if _state["node"] is not None:
                _state["node"].stop()
            os._exit(3)

    return reactor.callLater(seconds, fire)


def sleep(reactor, seconds):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def main(argv=None):
    args = common.driver_args(argv)
    from twisted.internet import defer, task
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, textFileLogObserver

    # dispycos's warnings (lost connections, refused messages) go to stderr, which run.py shows on failure.
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False)

    out = {}

    async def go(reactor):
        dog = watchdog(reactor, WATCHDOG["quick" if args.quick else "full"])
        try:
            out["r"] = await run_workload(args, reactor)
        finally:
            if dog.active():
                dog.cancel()

    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    except SystemExit as e:
        if e.code not in (0, None) or "r" not in out:
            raise
    value, extra = out["r"]
    common.emit(args.workload, value, **extra)


if __name__ == "__main__":
    main()
