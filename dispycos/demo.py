"""
A short tour of dispycos: C{python -m dispycos.demo}.

Starts a node with two servers on this machine (L{LocalCluster}), runs the
three kinds of task functions, a batch with C{run_results} and a message
exchange, and explains each step as it goes. Takes a few seconds.
"""

import os
import time

from twisted.internet import defer, task

import dispycos


def square(n, task=None):
    """A generator function, pycos style: yielded Deferreds are awaited."""
    yield task.sleep(0.1)
    return n * n


async def add(a, b, task=None):
    """An C{async def} coroutine: awaits Deferreds."""
    await task.sleep(0.1)
    return a + b


def where_and_multiply(a, b):
    """A plain function: runs in a worker thread of its server (may block)."""
    time.sleep(0.1)
    return os.getpid(), a * b


def shout(task=None):
    """Answers every (reply_to, word) message until it gets None."""
    count = 0
    while True:
        msg = yield task.receive()
        if msg is None:
            return count
        reply_to, word = msg
        count += 1
        reply_to.send("%s! (from %s)" % (word.upper(), task.location))


def talk(remote, words, task=None):
    """A local task in this process: sends words to C{remote}, prints its answers."""
    for word in words:
        say("   client sends %r" % (word,))
        remote.send((task, word))
        answer = yield task.receive(timeout=10)
        say("   remote task answers %r" % (answer,))
    remote.send(None)
    return len(words)


def say(text):
    print(text, flush=True)


async def main(reactor):
    say("dispycos %s demo" % dispycos.__version__)
    say("1. Starting a node with 2 servers on this machine (a LocalCluster) ...")
    started = time.monotonic()
    async with dispycos.LocalCluster(cpus=2, echo=False) as cluster:
        say("   node ready at %s" % cluster.node_location)

        say("2. Creating a computation with four functions and scheduling it ...")
        computation = dispycos.Computation([square, add, where_and_multiply, shout])
        await computation.schedule(timeout=60)
        servers = await computation.servers()
        say("   scheduled: %d servers ready: %s" % (len(servers), ", ".join(str(s) for s in servers)))

        say("3. The three kinds of task functions:")
        rtask = await computation.run(square, 7)
        say("   square(7), a generator function, runs at %s ..." % (rtask.location,))
        say("   ... and returns %r" % (await rtask.result(),))
        result = await computation.run_result(add, 2, 3)
        say("   add(2, 3), an async def coroutine, returns %r" % (result,))
        pid, product = await computation.run_result(where_and_multiply, 6, 7)
        say("   where_and_multiply(6, 7), a plain function, ran in a thread of the server"
            " with pid %d (this client is pid %d) and returns %r" % (pid, os.getpid(), product))

        say("4. run_results: square over range(10), spread over the servers, results in order:")
        results = await computation.run_results(square, range(10))
        say("   %r" % (results,))

        say("5. Messages: a remote task answers what a local task sends it:")
        remote = await computation.run_async(shout)
        say("   remote task %s started" % (remote,))
        local = dispycos.Task(talk, remote, ["hello", "dispycos"])
        await local.result()
        answered = await remote.result(timeout=10)
        say("   the remote task answered %d messages and ended" % (answered,))

        say("6. Closing the computation and stopping the node ...")
        await computation.close()
    say("done in %.1f s" % (time.monotonic() - started))


def run():
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


if __name__ == "__main__":
    run()
