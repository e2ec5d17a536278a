"""
dask.distributed driver: one workload per process, run by benchmarks/run.py
with the anchors venv. A LocalCluster of 2 worker processes x 1 thread on
127.0.0.1, dashboard off; the scheduler and the client live in this process.

    benchmarks/.anchors-venv/bin/python benchmarks/bench_dask.py --workload W2

prints one line ``BENCH-RESULT {json}``. W1: ``client.submit(noop, i,
pure=False)`` one at a time, then ``.result()`` of each; W1rr:
``client.gather(client.map(noop, range(n), pure=False))``. W3 uses a distributed.Queue (this
dask has no Pub/Sub any more): the client puts, one running task gets.
"""

import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402


def noop(i=None):
    return 0


def cpu_task(n):
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


def receiver(name, n):
    from distributed import Queue

    q = Queue(name)
    count = 0
    for _ in range(n):
        q.get(timeout=300)
        count += 1
    return count


def run_workload(args):
    import dask
    from distributed import Client, LocalCluster, Queue

    w, size = args.workload, args.size
    extra = {}
    n_cpu = None
    if w == "W5":
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
    data = b"\x5a" * (size["w4_mib"] * 2**20) if w == "W4" else None
    local_dir = args.workdir or None
    dask.config.set({"distributed.worker.daemon": True, "temporary-directory": local_dir})

    t_spawn = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        assert client.submit(noop, pure=False).result() == 0
        if w == "W6":
            return time.perf_counter() - t_spawn, extra

        def start_w3(n):
            q = Queue("bench-w3")
            return client.submit(receiver, "bench-w3", n, pure=False), q.put

        return common.measure_blocking(
            w, size, lambda fn, *a: client.submit(fn, *a, pure=False), lambda f, timeout: f.result(timeout=timeout),
            noop, cpu_task, n_cpu=n_cpu, data=data, start_w3=start_w3,
            map_all=lambda fn, it: client.gather(client.map(fn, it, pure=False)))
    finally:
        pids = common.descendants(os.getpid())
        try:
            client.close(timeout=20)
            cluster.close(timeout=20)
        finally:
            common.kill_pids(pids)


def main(argv=None):
    args = common.driver_args(argv)
    value, extra = run_workload(args)
    common.emit(args.workload, value, **extra)


if __name__ == "__main__":
    main()
