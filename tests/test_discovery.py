"""
UDP discovery: signed JSON packets (never pickle), replay and size limits, and
real nodes and schedulers finding each other by broadcast on 127.255.255.255.
"""

import json
import time

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, Scheduler
from dispycos.protocol.discovery import MAGIC, MAX_PACKET, ReplayGuard, broadcast_addresses, decode, encode
from dispycos.protocol.auth import key_from_secret

from .conftest import NodeProcess
from .test_shared import SchedulerProcess

KEY = key_from_secret("s3cret")


def test_packets_round_trip_and_are_signed():
    pkt = encode(KEY, {"kind": "announce", "port": 1234})
    msg = decode(KEY, pkt, ReplayGuard())
    assert msg["kind"] == "announce" and msg["port"] == 1234
    assert decode(key_from_secret("other"), pkt) is None
    tampered = pkt.replace(b"1234", b"4321")
    assert decode(KEY, tampered) is None
    assert pkt.startswith(MAGIC) and b"pickle" not in pkt


def test_replayed_old_and_oversized_packets_are_dropped():
    guard = ReplayGuard()
    pkt = encode(KEY, {"kind": "announce"})
    assert decode(KEY, pkt, guard) is not None
    assert decode(KEY, pkt, guard) is None  # same nonce again
    assert decode(KEY, pkt, ReplayGuard(), now=time.time() + 3600) is None  # too old
    big = encode(KEY, {"kind": "announce", "pad": "x" * MAX_PACKET})
    assert decode(KEY, big, ReplayGuard()) is None


@pytest.mark.parametrize("data", [b"", b"DISPYCOS1\n", MAGIC + b"{" + b"\0" * 32, b"\xff" * 100,
                                  MAGIC + json.dumps([1, 2]).encode() + b"x" * 32])
def test_garbage_never_raises(data):
    assert decode(KEY, data, ReplayGuard()) is None


def test_loopback_broadcast_stays_on_loopback():
    assert broadcast_addresses("127.0.0.1") == ["127.255.255.255"]


def square(x):
    return x * x


@pytest_twisted.ensureDeferred
async def test_private_scheduler_discovers_a_node(fresh_node):
    node = fresh_node(cpus=1)
    scheduler = Scheduler(secret=node.secret)  # no nodes listed: found by broadcast
    comp = Computation([square])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_result(square, 9) == 81
        assert [str(s).rsplit(":", 1)[0] for s in await comp.servers()] == ["127.0.0.1"]
    finally:
        await comp.close()
        await scheduler.close()


@pytest_twisted.ensureDeferred
async def test_node_started_later_announces_itself():
    import secrets

    secret = secrets.token_hex(8)
    scheduler = Scheduler(secret=secret)
    comp = Computation([square])
    d = comp.schedule(timeout=60)
    node = NodeProcess(cpus=1, secret=secret)
    try:
        await d
        assert await comp.run_result(square, 3) == 9
    finally:
        await comp.close()
        await scheduler.close()
        node.stop()


@pytest_twisted.ensureDeferred
async def test_client_finds_shared_scheduler_on_local_network(fresh_node):
    node = fresh_node(cpus=1)
    sched = SchedulerProcess([], node.secret)  # finds the node by broadcast, too
    try:
        comp = Computation([square], secret=node.secret)
        await comp.schedule(timeout=30)  # no location: found by broadcast
        try:
            assert await comp.run_result(square, 4) == 16
        finally:
            await comp.close()
    finally:
        sched.stop()


@pytest_twisted.ensureDeferred
async def test_no_scheduler_found_errbacks_clearly():
    comp = Computation([square], secret="nobody-has-this")
    with pytest.raises(dispycos.ScheduleError) as info:
        await comp.schedule()
    assert "no scheduler" in str(info.value)
