"""
dispycos driver: one workload per process, run by benchmarks/run.py with this
repository's virtualenv. Fresh nodes are started for the workload as
tests/conftest.py does (``python -m dispycos.scripts -c 2 -i 127.0.0.1
--tcp_ports 0 ...``, stopped by PID), with a private Scheduler in this process:
one node of 2 servers, or for W7 8 nodes x 4 servers on 127.0.0.1 ... 127.0.0.8
(quick: 2 x 2).

    python benchmarks/bench_dispycos.py --workload W2 [--quick]

prints one line ``BENCH-RESULT {json}`` (W1map without ``Computation.map``:
value null and ``"skipped": "no Computation.map"``).
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


def noop(i=None, task=None):
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


def cpu_gen(n, task=None):
    """The W5g body: the same loop in a generator function that never yields (pycos style)."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x
    yield  # noqa: unreachable - makes this a generator function


COMPONENTS = [noop, plain_noop, receiver, cpu_task, cpu_gen]

# -- the nodes ----------------------------------------------------------------------


class Node:
    """A dispycosnode child process (C{cpus} servers) on C{ip}, stopped by PID."""

    def __init__(self, cpus=2, ip="127.0.0.1", secret=None, workdir=None):
        self.secret = secret or secrets.token_hex(8)
        self.dest = tempfile.mkdtemp(prefix="dispycos-bench-node-", dir=workdir)
        env = dict(os.environ)
        env["DISPYCOS_SECRET"] = self.secret
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        cmd = [sys.executable, "-m", "dispycos.scripts", "-c", str(cpus), "-i", ip, "--tcp_ports", "0",
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


class Cluster:
    """
    C{count} nodes of C{cpus} servers each, on 127.0.0.1, 127.0.0.2, ...
    (all on loopback), sharing one secret; started together, stopped by PID.
    """

    def __init__(self, count=1, cpus=2, workdir=None):
        if not 1 <= count <= 254:
            raise ValueError("count must be 1..254 (addresses 127.0.0.1 ... 127.0.0.%d)" % count)
        self.secret = secrets.token_hex(8)
        self.nodes = []
        try:
            for k in range(count):
                self.nodes.append(Node(cpus, "127.0.0.%d" % (k + 1), self.secret, workdir))
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout=60):
        """The nodes' locations once every node is ready."""
        return [node.wait_ready(timeout) for node in self.nodes]

    def pids(self):
        return [pid for node in self.nodes for pid in node.pids()]

    def stop(self):
        for node in self.nodes:
            node.stop()


# -- the workloads -------------------------------------------------------------------


async def session(cluster, locations, components):
    """A private Scheduler of the cluster's nodes (no discovery when there are several) and a scheduled Computation."""
    from dispycos import Computation, Scheduler

    options = {"discover": False} if len(locations) > 1 else {}
    sched = Scheduler(nodes=locations, secret=cluster.secret, **options)
    comp = Computation(components)
    await comp.schedule(timeout=60)
    return sched, comp


async def close(sched, comp):
    try:
        await comp.close(terminate=True)
    finally:
        await sched.close()


async def wait_servers(comp, reactor, want, timeout=120):
    """Wait (bounded) until the computation uses C{want} servers."""
    deadline = time.monotonic() + timeout
    while True:
        have = len(await comp.servers())
        if have >= want:
            return have
        if time.monotonic() > deadline:
            raise RuntimeError("only %d of %d servers ready after %s s" % (have, want, timeout))
        await sleep(reactor, 0.1)


class Context:
    """What a workload function needs: the computation, the sizes, the reactor, the cluster, W5's loop count."""

    def __init__(self, comp, size, reactor, cluster, n_cpu=None):
        self.comp, self.size, self.reactor, self.cluster = comp, size, reactor, cluster
        self.n_cpu = n_cpu


class Clock:
    """Wall and process CPU time from creation; L{extra} gives the fields the workloads record."""

    def __init__(self):
        self.t, self.cpu = time.perf_counter(), time.process_time()

    def seconds(self):
        return time.perf_counter() - self.t

    def extra(self, tasks=None):
        dt, cpu = self.seconds(), time.process_time() - self.cpu
        out = {"seconds": dt, "client_cpu_seconds": cpu}
        if tasks:
            out["client_cpu_us_per_task"] = cpu / tasks * 1e6
        return out


async def w1(ctx, run=None):
    """W1 (and W1a with C{run_async}): C{rt = await run(noop, i)} one at a time, then C{await rt.result()} of each."""
    n = ctx.size["w1_tasks"]
    run = run or ctx.comp.run
    clock = Clock()
    rtasks = []
    for i in range(n):
        rtasks.append(await run(noop, i))
    t_submitted = clock.seconds()
    results = [await rt.result() for rt in rtasks]
    extra = clock.extra(n)
    assert results == [0] * n, results[:5]
    extra["submit_seconds"] = t_submitted
    return n / extra["seconds"], extra


async def w1a(ctx):
    """W1a: W1 with async (I/O) tasks."""
    return await w1(ctx, ctx.comp.run_async)


async def w1g(ctx):
    """W1g (the first edition's W1): submit all tasks concurrently, then gather the results."""
    from twisted.internet import defer

    n = ctx.size["w1_tasks"]
    clock = Clock()
    rtasks = await defer.gatherResults([ctx.comp.run(noop, i) for i in range(n)], consumeErrors=True)
    t_submitted = clock.seconds()
    results = await defer.gatherResults([r.result() for r in rtasks], consumeErrors=True)
    extra = clock.extra(n)
    assert results == [0] * n, results[:5]
    extra["submit_seconds"] = t_submitted
    return n / extra["seconds"], extra


async def run_results(ctx, n):
    """C{await comp.run_results(noop, range(n))}: (tasks/s, extra), with the CPU the cluster's processes spent."""
    pids = ctx.cluster.pids()
    cluster_cpu = common.cpu_seconds_of(pids)
    clock = Clock()
    results = await ctx.comp.run_results(noop, range(n))
    extra = clock.extra(n)
    assert results == [0] * n, results[:5]
    # Where the two cores went: the client's CPU is in client_cpu_us_per_task.
    extra["cluster_cpu_us_per_task"] = (common.cpu_seconds_of(pids) - cluster_cpu) / n * 1e6
    return n / extra["seconds"], extra


async def w1rr(ctx):
    """W1rr: run_results of W1rr's size on the node's 2 servers."""
    return await run_results(ctx, ctx.size["w1rr_tasks"])


async def w7(ctx):
    """W7: W1rr's measurement on every server of the cluster (8 nodes x 4 servers)."""
    value, extra = await run_results(ctx, ctx.size["w7_tasks"])
    extra.update(nodes=len(ctx.cluster.nodes), servers=len(await ctx.comp.servers()))
    return value, extra


async def w1map(ctx):
    """W1map: C{async for r in comp.map(noop, range(n))}, every result consumed, with this process's peak RSS."""
    n = ctx.size["w1map_tasks"]
    count = 0
    with common.PeakRSS() as mem:
        clock = Clock()
        async for r in ctx.comp.map(noop, range(n)):
            count += r == 0
        extra = clock.extra(n)
    assert count == n, count
    extra.update(mem.report())
    return n / extra["seconds"], extra


async def w2(ctx):
    """W2: one no-op at a time, p50 round trip in ms (and a plain-function no-op for information)."""
    size, comp = ctx.size, ctx.comp
    lat = []
    for i in range(size["w2_warmup"] + size["w2_calls"]):  # bounded
        t = time.perf_counter()
        r = await comp.run_result(noop)
        if i >= size["w2_warmup"]:
            lat.append(time.perf_counter() - t)
    assert r == 0
    value = common.p50(lat) * 1000
    lat.sort()
    extra = {"p90_ms": lat[int(len(lat) * 0.9)] * 1000, "min_ms": lat[0] * 1000}
    # the same with a plain function (worker thread on the server), for information
    lat = []
    for i in range(size["w2_warmup"] + size["w2_calls"] // 2):
        t = time.perf_counter()
        await comp.run_result(plain_noop)
        if i >= size["w2_warmup"]:
            lat.append(time.perf_counter() - t)
    extra["plain_fn_p50_ms"] = common.p50(lat) * 1000
    return value, extra


async def w3(ctx):
    """W3: one-way messages to one remote task, rate until its result is back."""
    n = ctx.size["w3_msgs"]
    rtask = await ctx.comp.run_async(receiver, n)
    t = time.perf_counter()
    for i in range(n):
        rtask.send(i)
    t_sent = time.perf_counter() - t
    count = await rtask.result(timeout=300)
    dt = time.perf_counter() - t
    assert count == n, count
    return n / dt, {"seconds": dt, "send_loop_seconds": t_sent}


async def w4(ctx):
    """W4: one large bytes argument to the builtin C{len}."""
    mib = ctx.size["w4_mib"]
    data = b"\x5a" * (mib * 2**20)
    t = time.perf_counter()
    r = await ctx.comp.run_result(len, data)
    dt = time.perf_counter() - t
    assert r == len(data), r
    return mib / dt, {"seconds": dt}


def speedup(ctx, serial, wall):
    """W5/W5g's value and extra fields for a wall time (see common.speedup)."""
    return common.speedup(serial, cpu_task, ctx.n_cpu, ctx.size["w5_tasks"], wall)


async def w5(ctx):
    """W5: the CPU-bound plain function, all submitted concurrently (run_result each), gathered."""
    from twisted.internet import defer

    k = ctx.size["w5_tasks"]
    serial = common.serial_seconds(cpu_task, ctx.n_cpu, k)
    t = time.perf_counter()
    results = await defer.gatherResults([ctx.comp.run_result(cpu_task, ctx.n_cpu) for _ in range(k)],
                                        consumeErrors=True)
    wall = time.perf_counter() - t
    assert len(results) == k
    return speedup(ctx, serial, wall)


async def w5g(ctx):
    """W5g: the CPU-bound generator function submitted as W1: C{await run} x k, then C{result()} x k."""
    k = ctx.size["w5_tasks"]
    serial = common.serial_seconds(cpu_task, ctx.n_cpu, k)
    t = time.perf_counter()
    rtasks = []
    for _ in range(k):
        rtasks.append(await ctx.comp.run(cpu_gen, ctx.n_cpu))
    results = [await rt.result() for rt in rtasks]
    wall = time.perf_counter() - t
    assert len(results) == k and results[0] == cpu_task(ctx.n_cpu), results
    return speedup(ctx, serial, wall)


async def mem(ctx):
    """MEM: RSS (value), USS and PSS of the node and its servers after a settle time."""
    await sleep(ctx.reactor, ctx.size["mem_settle"])
    return common.memory_report(ctx.cluster.pids())


#: Workload name -> its measurement (W6 is timed by run_workload: it spans the node's start).
MEASURE = {"W1": w1, "W1g": w1g, "W1a": w1a, "W1rr": w1rr, "W1map": w1map, "W2": w2, "W3": w3, "W4": w4,
           "W5": w5, "W5g": w5g, "W7": w7, "MEM": mem}


def cluster_shape(w, size):
    """(nodes, servers per node) of workload C{w}."""
    return (size["w7_nodes"], size["w7_servers"]) if w == "W7" else (1, 2)


async def run_workload(args, reactor):
    # What the driver uses is imported before the clock starts, as the anchors' drivers do
    # (dispycos/__init__ imports its client side lazily).
    from dispycos import Computation, Scheduler  # noqa: F401

    w, size = args.workload, args.size
    if w == "W1map" and not hasattr(Computation, "map"):
        return None, {"skipped": "no Computation.map"}
    extra = {}
    n_cpu = None
    if w in ("W5", "W5g"):
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
    count, cpus = cluster_shape(w, size)
    t_spawn = time.perf_counter()
    cluster = _state["cluster"] = Cluster(count, cpus, workdir=args.workdir)
    sched = comp = None
    try:
        locations = cluster.wait_ready()
        t_ready = time.perf_counter()
        if w == "MEM":
            extra["rss_mib_before_schedule"] = round(common.rss_of(cluster.pids())[0], 1)
        sched, comp = await session(cluster, locations, COMPONENTS)
        t_scheduled = time.perf_counter()
        first = await comp.run_result(noop)
        assert first == 0, first
        if count > 1:
            await wait_servers(comp, reactor, count * cpus)
        prof = Profiling(cluster, w)  # does nothing unless $BENCH_PROFILE_DIR is set
        if w == "W6":
            value = time.perf_counter() - t_spawn
            # Where the time went: the node (and servers) ready, the computation scheduled, the first task.
            extra.update(node_ready_seconds=t_ready - t_spawn, scheduled_seconds=t_scheduled - t_ready,
                         first_task_seconds=t_spawn + value - t_scheduled)
        else:
            value, more = await MEASURE[w](Context(comp, size, reactor, cluster, n_cpu))
            extra.update(more)
        prof.stop()
    finally:
        if comp is not None:
            await close(sched, comp)
        cluster.stop()
    return value, extra


class Profiling:
    """
    With $BENCH_PROFILE_DIR set (see profile_dispycos.py): cProfile of this
    process and py-spy ($BENCH_PYSPY) on the node and its servers, from after
    the warm-up task to the end of the measurement.
    """

    def __init__(self, cluster, workload):
        self.dir = os.environ.get("BENCH_PROFILE_DIR")
        self.spies = []
        self.profile = None
        if not self.dir:
            return
        import cProfile

        self.workload = workload
        pyspy = os.environ.get("BENCH_PYSPY")  # unset: profile_dispycos.py found no py-spy
        for i, pid in enumerate([os.getpid()] + cluster.pids() if pyspy else []):
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
_state = {"cluster": None}
#: Seconds a workload may take in this driver before the watchdog ends it (full, quick).
WATCHDOG = {"W1map": (540, 100), "W7": (240, 50)}
WATCHDOG_DEFAULT = (60, 40)


def watchdog_seconds(workload, quick):
    return WATCHDOG.get(workload, WATCHDOG_DEFAULT)[1 if quick else 0]


def watchdog(reactor, seconds):
    """
    If the workload has not finished after C{seconds}, describe the
    connections (requests without an answer, unparsed bytes, flow-control
    state) on stderr, stop the node and exit: a hang becomes a clear failure.
    """

    def fire():
        try:
            from dispycos.peer.registry import current_runtime

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
            if _state["cluster"] is not None:
                _state["cluster"].stop()
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
        dog = watchdog(reactor, watchdog_seconds(args.workload, args.quick))
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
    if value is None:
        common.skip(args.workload, extra["skipped"])
    else:
        common.emit(args.workload, value, **extra)


if __name__ == "__main__":
    main()
