"""
dask.distributed driver: one workload per process, run by benchmarks/run.py
with the anchors venv. A LocalCluster of 2 worker processes x 1 thread on
127.0.0.1, dashboard off; the scheduler and the client live in this process.

    benchmarks/.anchors-venv/bin/python benchmarks/bench_dask.py --workload W2

prints one line ``BENCH-RESULT {json}``. W3 uses a distributed.Queue (this
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
    serial = None
    if w == "W5":
        n_cpu = args.cpu_iters or common.calibrate(size["w5_seconds"], cpu_task)
        serial = common.serial_seconds(cpu_task, n_cpu, size["w5_tasks"])
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
        if w == "W1":
            n = size["w1_tasks"]
            t = time.perf_counter()
            futures = [client.submit(noop, i, pure=False) for i in range(n)]
            extra["submit_seconds"] = time.perf_counter() - t
            results = client.gather(futures)
            dt = time.perf_counter() - t
            assert results == [0] * n
            extra["seconds"] = dt
            return n / dt, extra
        if w == "W2":
            lat = []
            for i in range(size["w2_warmup"] + size["w2_calls"]):
                t = time.perf_counter()
                r = client.submit(noop, i, pure=False).result()
                if i >= size["w2_warmup"]:
                    lat.append(time.perf_counter() - t)
            assert r == 0
            lat.sort()
            extra.update(p90_ms=lat[int(len(lat) * 0.9)] * 1000, min_ms=lat[0] * 1000)
            return common.p50(lat) * 1000, extra
        if w == "W3":
            n = size["w3_msgs"]
            q = Queue("bench-w3")
            fut = client.submit(receiver, "bench-w3", n, pure=False)
            t = time.perf_counter()
            for i in range(n):
                q.put(i)
            extra["send_loop_seconds"] = time.perf_counter() - t
            count = fut.result(timeout=600)
            dt = time.perf_counter() - t
            assert count == n, count
            extra["seconds"] = dt
            return n / dt, extra
        if w == "W4":
            t = time.perf_counter()
            r = client.submit(len, data, pure=False).result()
            dt = time.perf_counter() - t
            assert r == len(data)
            extra["seconds"] = dt
            return size["w4_mib"] / dt, extra
        if w == "W5":
            k = size["w5_tasks"]
            t = time.perf_counter()
            futures = [client.submit(cpu_task, n_cpu, pure=False) for _ in range(k)]
            client.gather(futures)
            wall = time.perf_counter() - t
            extra.update(serial_seconds=serial, wall_seconds=wall, cpu_iters=n_cpu)
            return serial / wall, extra
        if w == "MEM":
            time.sleep(size["mem_settle"])
            mib, detail = common.rss_of(common.descendants(os.getpid()))
            extra.update(processes=detail, pss_mib=common.pss_total(detail))
            return mib, extra
        raise ValueError(w)
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
