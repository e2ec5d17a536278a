"""
Resource limits with real processes: a full mailbox refuses messages with a
clear error to the sender, and nothing else breaks.
"""

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, Scheduler

from .test_core import sleep


def hoard(task=None):
    """Never reads its mailbox until told (by a file) — it just sleeps."""
    yield task.sleep(3)
    n = 0
    while True:
        try:
            yield task.receive(timeout=0.5)
            n += 1
        except dispycos.TimeoutError:
            return n


def echo(x):
    return x


@pytest_twisted.ensureDeferred
async def test_mailbox_cap_refuses_with_an_error_and_nothing_else_breaks(fresh_node):
    node = fresh_node(cpus=2, env={"DISPYCOS_MAX_MAILBOX": "100"})
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([hoard, echo])
    try:
        await comp.schedule(timeout=30)
        rtask = await comp.run_async(hoard)
        for i in range(100):
            assert await rtask.deliver(i, timeout=10) == 1
        with pytest.raises(dispycos.MailboxFull):
            await rtask.deliver("one too many", timeout=10)
        for i in range(50):  # one-way sends past the cap are refused too...
            rtask.send(i)
        with pytest.raises(dispycos.MailboxFull):
            for _ in range(100):  # ...and the sender hears of it (bounded wait)
                await sleep(0.05)
                rtask.send("more")
        # the computation goes on
        assert await comp.run_results(echo, range(10)) == list(range(10))
        assert await rtask.result(timeout=30) == 100
    finally:
        await comp.close()
        await scheduler.close()
    assert "mailbox of task" in node.output()


@pytest_twisted.ensureDeferred
async def test_mailbox_byte_cap_refuses_big_messages_and_keeps_small_ones(fresh_node):
    """The mailbox is capped in bytes too: 100 kB of unread 10 kB messages, then MailboxFull."""
    node = fresh_node(cpus=1, env={"DISPYCOS_MAX_MAILBOX_BYTES": "100000"})
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([hoard])
    try:
        await comp.schedule(timeout=30)
        rtask = await comp.run_async(hoard)
        accepted = 0
        with pytest.raises(dispycos.MailboxFull, match="bytes unread"):
            for _ in range(20):
                await rtask.deliver(b"x" * 10000, timeout=10)
                accepted += 1
        assert 8 <= accepted <= 10  # each arrives as a little over 10 kB
        # small messages still fit, and the task reads everything it was given
        await rtask.deliver(b"y", timeout=10)
        assert await rtask.result(timeout=30) == accepted + 1
    finally:
        await comp.close()
        await scheduler.close()
