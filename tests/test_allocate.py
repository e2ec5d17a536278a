"""
Node allocation: DispycosNodeAllocate rules, whitelists and subclasses, with
private and shared schedulers and real nodes on two loopback addresses.
"""


import re

import pytest
import pytest_twisted

from dispycos import Computation, DispycosNodeAllocate, Scheduler
from dispycos.scheduler.allocate import allocate_cpus
from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo

from .test_shared import SchedulerProcess


def info(addr="10.0.0.5", name="alpha", cpus=4, memory=8 << 30, disk=100 << 30, plat="Linux-6.1-x86_64"):
    return DispycosNodeInfo(name, addr, cpus, plat, DispycosNodeAvailInfo(None, 50.0, memory, disk, 0))


def test_rules():
    assert DispycosNodeAllocate("10.0.0.5").allocate("10.0.0.5", "a", "Linux", 4, 1, 1) == 4
    # the pattern must match the whole address: no prefix matches
    assert DispycosNodeAllocate("10.0.0.1").allocate("10.0.0.15", "a", "Linux", 4, 1, 1) == -1
    assert DispycosNodeAllocate(re.compile(r"10\.0\.0\.\d+")).allocate("10.0.0.15", "a", "Linux", 4, 1, 1) == 4
    assert DispycosNodeAllocate(re.compile(r"10\.0\.0\.1")).allocate("10.0.0.15", "a", "Linux", 4, 1, 1) == -1
    assert DispycosNodeAllocate("10.0.0.*").allocate("10.0.0.15", "a", "Linux", 4, 1, 1) == 4
    assert DispycosNodeAllocate("alpha").allocate("10.0.0.5", "alpha", "Linux", 4, 1, 1) == 4
    assert DispycosNodeAllocate("*", platform="windows").allocate("1.2.3.4", "a", "Linux-x86_64", 4, 1, 1) == -1
    assert DispycosNodeAllocate("*", platform="linux.*x86").allocate("1.2.3.4", "a", "Linux-6-x86_64", 4, 1, 1) == 4
    assert DispycosNodeAllocate("*", cpus=2).allocate("1.2.3.4", "a", "L", 4, 1, 1) == 2
    assert DispycosNodeAllocate("*", cpus=8).allocate("1.2.3.4", "a", "L", 4, 1, 1) == 0
    assert DispycosNodeAllocate("*", cpus=-1).allocate("1.2.3.4", "a", "L", 4, 1, 1) == 3
    assert DispycosNodeAllocate("*", memory=100).allocate("1.2.3.4", "a", "L", 4, 50, 1) == 0
    assert DispycosNodeAllocate("*", disk=100).allocate("1.2.3.4", "a", "L", 4, 500, 50) == 0
    assert DispycosNodeAllocate("*", disk=100).allocate("1.2.3.4", "a", "L", 4, 500, None) == 4
    with pytest.raises(TypeError):
        DispycosNodeAllocate(None)


def test_wildcards_are_literal_but_for_the_star():
    """SPEC 3.6: '*' matches any run of characters, every other character is literal, whole address."""
    def takes(pattern, addr):
        return DispycosNodeAllocate(pattern).matches(addr, "some-name")

    assert takes("192.168.1.*", "192.168.1.10")
    assert not takes("192.168.1.*", "192.168.10.5")  # the dots are not "any character"
    assert not takes("192.168.1.*", "192.168.1")
    assert takes("192.168.*.5", "192.168.10.5") and not takes("192.168.*.5", "192.168.10.50")
    assert takes("*", "10.1.2.3")
    assert not takes("10.0.0.1", "10.0.0.10")
    # regular-expression characters in a string are literal: only a compiled pattern is a regex
    assert not takes("10.0.0.[0-9]", "10.0.0.5") and not takes(".*", "10.0.0.5")
    assert DispycosNodeAllocate(re.compile(r"127\.0\.1\.1\d")).matches("127.0.1.10", "n")
    assert not DispycosNodeAllocate(re.compile(r"127\.0\.1\.1\d")).matches("127.0.1.100", "n")  # whole address


def test_whitelist_semantics():
    assert allocate_cpus([], info()) == 4
    assert allocate_cpus([DispycosNodeAllocate("10.0.0.9")], info()) == 0  # not listed: not used
    windows_out = [DispycosNodeAllocate("*", platform="Windows", cpus=0), DispycosNodeAllocate("*")]
    assert allocate_cpus(windows_out, info()) == 4
    assert allocate_cpus([DispycosNodeAllocate("*", cpus=-3)], info()) == 1
    with pytest.raises(TypeError):
        Computation([square], node_allocations=[42])


def square(x):
    return x * x


class OneEach(DispycosNodeAllocate):
    """A subclass that decides: one server per node."""

    calls = []

    def allocate(self, ip_addr, name, platform, cpus, memory, disk):
        OneEach.calls.append((ip_addr, cpus))
        return 1


@pytest.fixture
def two_nodes(fresh_node):
    import secrets

    secret = secrets.token_hex(8)
    return fresh_node(cpus=2, secret=secret, host="127.0.0.1"), fresh_node(cpus=2, secret=secret, host="127.0.0.2")


async def run_with(comp, location=None, want_servers=2):
    from .test_core import sleep

    await comp.schedule(location, timeout=30)
    try:
        for _ in range(200):  # schedule() fires with the first ready server: wait for the rest (bounded)
            if len(await comp.servers()) >= want_servers:
                break
            await sleep(0.05)
        assert await comp.run_results(square, range(6)) == [i * i for i in range(6)]
        return sorted(str(s) for s in await comp.servers()), await comp.nodes()
    finally:
        await comp.close()


@pytest_twisted.ensureDeferred
async def test_private_scheduler_whitelist_and_subclass(two_nodes):
    a, b = two_nodes
    scheduler = Scheduler(nodes=[a.location, b.location], secret=a.secret, discover=False)
    try:
        servers, nodes = await run_with(Computation([square], node_allocations=["127.0.0.2"]))
        assert nodes == ["127.0.0.2"] and len(servers) == 2
        OneEach.calls.clear()
        servers, nodes = await run_with(Computation([square], node_allocations=[OneEach("*")]))
        assert nodes == ["127.0.0.1", "127.0.0.2"] and len(servers) == 2
        assert sorted(OneEach.calls) == [("127.0.0.1", 2), ("127.0.0.2", 2)]
    finally:
        await scheduler.close()


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_whitelist_and_subclass(two_nodes):
    a, b = two_nodes
    sched = SchedulerProcess([a.location, b.location], a.secret)
    try:
        servers, nodes = await run_with(Computation([square], secret=a.secret, node_allocations=["127.0.0.1"]),
                                        sched.location)
        assert nodes == ["127.0.0.1"] and len(servers) == 2
        OneEach.calls.clear()
        servers, nodes = await run_with(Computation([square], secret=a.secret, node_allocations=[OneEach("*")]),
                                        sched.location)
        assert len(servers) == 2 and nodes == ["127.0.0.1", "127.0.0.2"]
        assert len(OneEach.calls) == 2  # the subclass ran here, in the client
    finally:
        sched.stop()


@pytest_twisted.ensureDeferred
async def test_wildcard_allocation_on_real_nodes(fresh_node):
    """'127.0.1.*' takes the nodes on 127.0.1.1 and 127.0.1.10, not the one on 127.0.10.1."""
    import secrets

    secret = secrets.token_hex(8)
    nodes = [fresh_node(cpus=1, secret=secret, host=h) for h in ("127.0.1.1", "127.0.1.10", "127.0.10.1")]
    scheduler = Scheduler(nodes=[n.location for n in nodes], secret=secret, discover=False)
    try:
        servers, used = await run_with(Computation([square], node_allocations=[DispycosNodeAllocate("127.0.1.*")]))
        assert used == ["127.0.1.1", "127.0.1.10"] and len(servers) == 2
        servers, used = await run_with(Computation([square], node_allocations=["127.0.1.1"]), want_servers=1)
        assert used == ["127.0.1.1"]
        servers, used = await run_with(Computation([square], node_allocations=[
            DispycosNodeAllocate(re.compile(r"127\.0\.(1\.10|10\.1)"))]), want_servers=2)
        assert used == ["127.0.1.10", "127.0.10.1"]
    finally:
        await scheduler.close()
