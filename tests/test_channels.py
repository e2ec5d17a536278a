"""
Channels and peer messaging with a real node: two subscribers on different
servers, deliver(n=2), and tasks on different servers messaging each other
only with peers_communicate.
"""

import pytest
import pytest_twisted

import dispycos
from dispycos import Channel

from .conftest import Session




def subscriber(channel, n, task=None):
    yield channel.subscribe(task)
    got = []
    for _ in range(n):
        got.append((yield task.receive(timeout=30)))
    yield channel.unsubscribe(task)
    return got


def finds_channel(name, task=None):
    ch = yield task.channel(name)
    yield ch.subscribe(task)
    msg = yield task.receive(timeout=30)
    return msg


@pytest_twisted.ensureDeferred
async def test_channel_with_two_subscribers(node):
    async with Session(node, [subscriber, finds_channel]) as comp:
        channel = Channel("data_channel")
        try:
            a, b = await comp.servers()
            t1 = await comp.run_at(a, subscriber, channel, 6)
            t2 = await comp.run_at(b, subscriber, channel, 6)
            assert await channel.deliver("start", n=2, timeout=30) == 2
            for i in range(4):
                channel.send(i)
            assert await channel.deliver("end", timeout=30) == 2
            expected = ["start", 0, 1, 2, 3, "end"]
            assert await t1.result(timeout=30) == expected
            assert await t2.result(timeout=30) == expected
            # lookup by name from a task
            t3 = await comp.run_async(finds_channel, "data_channel")
            assert await channel.deliver("hello", n=1, timeout=30) == 1
            assert await t3.result(timeout=30) == "hello"
        finally:
            channel.close()


def ping_peer(peer, task=None):
    peer.send(("from", task.location))
    reply = yield task.receive(timeout=30)
    return reply


def pong(task=None):
    msg = yield task.receive(timeout=30)
    peer_location = msg[1]
    return peer_location


def answer_peer(task=None):
    sender = yield task.receive(timeout=30)
    yield sender.deliver("pong from %s" % (task.location,), timeout=10)
    return "answered"


def ask_peer(peer, task=None):
    yield peer.deliver(task, timeout=10)
    reply = yield task.receive(timeout=30)
    return reply


@pytest_twisted.ensureDeferred
async def test_tasks_on_two_servers_message_each_other(node):
    async with Session(node, [answer_peer, ask_peer], peers_communicate=True) as comp:
        a, b = await comp.servers()
        answerer = await comp.run_at(a, answer_peer)
        asker = await comp.run_at(b, ask_peer, answerer)
        assert await asker.result(timeout=30) == "pong from %s" % (a,)
        assert await answerer.result(timeout=30) == "answered"


@pytest_twisted.ensureDeferred
async def test_peer_messages_refused_without_peers_communicate(node):
    async with Session(node, [answer_peer, ask_peer]) as comp:
        a, b = await comp.servers()
        answerer = await comp.run_async_at(a, answer_peer)
        asker = await comp.run_at(b, ask_peer, answerer)
        with pytest.raises(dispycos.RemoteTaskError) as info:
            await asker.result(timeout=30)
        assert "peers_communicate" in info.value.text
        await answerer.terminate()
