"""
TLS on every link: a real node with certificates (mutual TLS), a private
scheduler and its client talking to the servers over TLS; and each failure
(wrong CA, wrong name, missing client certificate, plaintext client, broken
configuration) failing fast with a clear error.
"""

import subprocess
import sys

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, Scheduler
from dispycos.protocol.tls import TLS, TLSConfigError, make_certificates

from .conftest import NodeProcess, env_for_children


@pytest.fixture(autouse=True)
def fresh_runtime():
    """A client process is all-TLS or not: give the next tests a plain one again."""
    yield
    from dispycos.peer.registry import current_runtime, forget_runtime

    runtime = current_runtime(create=False)
    if runtime is not None and runtime.tls is not None:
        for link in list(runtime.links.values()):
            if link.proto is not None and link.proto.connected:
                link.proto.transport.abortConnection()
        runtime.stop_listening()
        forget_runtime(runtime)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    good = make_certificates(str(base / "good"))
    other_ca = make_certificates(str(base / "other"))
    wrong_name = make_certificates(str(base / "wrongname"), names=("not-dispycos",))
    # a certificate for the right name, but signed by the other CA
    return {"good": good, "other": other_ca, "wrongname": wrong_name}


@pytest.fixture(scope="module")
def tls_node(pki):
    g = pki["good"]
    node = NodeProcess(cpus=2, args=["--certfile", g["dispycos.pem"], "--keyfile", g["dispycos.key"],
                                     "--cafile", g["ca.pem"]])
    yield node
    node.stop()


def square(x):
    return x * x


async def attempt(node, **tls):
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False, **tls)
    comp = Computation([square])
    try:
        await comp.schedule(timeout=30)
        return await comp.run_results(square, range(5))
    finally:
        await comp.close()
        await scheduler.close()


@pytest_twisted.ensureDeferred
async def test_tls_happy_path(tls_node, pki):
    g = pki["good"]
    assert await attempt(tls_node, certfile=g["dispycos.pem"], keyfile=g["dispycos.key"],
                         cafile=g["ca.pem"]) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("case", ["wrong CA", "wrong name", "no client certificate", "plaintext"])
@pytest_twisted.ensureDeferred
async def test_tls_failures_are_fast_and_clear(tls_node, pki, case):
    g, o, w = pki["good"], pki["other"], pki["wrongname"]
    tls = {
        "wrong CA": dict(certfile=g["dispycos.pem"], keyfile=g["dispycos.key"], cafile=o["ca.pem"]),
        "wrong name": dict(certfile=w["dispycos.pem"], keyfile=w["dispycos.key"], cafile=w["ca.pem"]),
        "no client certificate": dict(cafile=g["ca.pem"]),
        "plaintext": {},
    }[case]
    import time

    started = time.monotonic()
    with pytest.raises(dispycos.ScheduleError) as info:
        await attempt(tls_node, **tls)
    assert time.monotonic() - started < 20
    assert "refused" in str(info.value)


def test_misconfiguration_stops_start_with_one_line(pki, tmp_path):
    g, o = pki["good"], pki["other"]
    cases = [
        ["--certfile", str(tmp_path / "missing.pem")],
        ["--certfile", g["dispycos.pem"], "--keyfile", o["dispycos.key"]],  # key of another certificate
        ["--certfile", g["dispycos.pem"], "--keyfile", g["dispycos.key"], "--cafile", str(tmp_path / "nope.pem")],
    ]
    for args in cases:
        out = subprocess.run([sys.executable, "-m", "dispycos.scripts", "-i", "127.0.0.1", "--dest_path",
                              str(tmp_path / "d"), "--daemon"] + args, capture_output=True, text=True, timeout=60,
                             env=env_for_children())
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
    with pytest.raises(TLSConfigError):
        TLS(g["dispycos.pem"], o["dispycos.key"])


@pytest_twisted.ensureDeferred
async def test_tls_client_shared_scheduler_node(tls_node, pki):
    from .test_shared import SchedulerProcess

    g = pki["good"]
    files = ["--certfile", g["dispycos.pem"], "--keyfile", g["dispycos.key"], "--cafile", g["ca.pem"]]
    sched = SchedulerProcess([tls_node.location], tls_node.secret, args=files)
    try:
        comp = Computation([square], secret=tls_node.secret, certfile=g["dispycos.pem"], keyfile=g["dispycos.key"],
                           cafile=g["ca.pem"])
        await comp.schedule(sched.location, timeout=30)
        try:
            assert await comp.run_results(square, range(4)) == [0, 1, 4, 9]
        finally:
            await comp.close()
        plain = Computation([square], secret=tls_node.secret)
        with pytest.raises(dispycos.ScheduleError):
            await plain.schedule(sched.location, timeout=30)
    finally:
        sched.stop()
