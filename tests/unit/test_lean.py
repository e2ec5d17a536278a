"""
Guards of dispycos._lean's asyncio stand-in: node and server processes import
Twisted's C{defer} without C{asyncio}. Each test fails loudly when a Twisted
release takes more from C{asyncio} than the stand-in gives, or when what it
gives stops behaving as C{asyncio}'s own names do.
"""

import ast
import asyncio
import collections.abc
import inspect
import types

from twisted.internet import defer

from dispycos import _lean

from ..conftest import run_python


def _asyncio_imports(module):
    """The names C{module}'s source takes from asyncio, and whether it imports the package itself."""
    tree = ast.parse(inspect.getsource(module))
    names, whole = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "asyncio":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "asyncio" for a in node.names):
            whole = True
    return names, whole


def test_twisted_defer_takes_from_asyncio_what_the_stand_in_has():
    names, whole = _asyncio_imports(defer)
    assert not whole
    assert names <= {"iscoroutine", "Future", "AbstractEventLoop"}, names
    stand_in = _lean._AsyncioStandIn()
    assert all(name in vars(stand_in) for name in names)


def test_the_classes_are_used_by_defer_in_annotations_only():
    # At run time defer calls iscoroutine; Future and AbstractEventLoop appear
    # only in annotations (strings, under "from __future__ import annotations").
    tree = ast.parse(inspect.getsource(defer))
    assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)
    annotations = set()
    for node in ast.walk(tree):
        for ann in [getattr(node, "annotation", None), getattr(node, "returns", None)]:
            if ann is not None:
                annotations.update(id(n) for n in ast.walk(ann))
    used = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in ("Future", "AbstractEventLoop")]
    assert used and all(id(n) in annotations for n in used)


async def _coroutine():
    return 1


def _generator():
    yield 1


class _Awaitable(collections.abc.Coroutine):
    def send(self, value):
        raise StopIteration

    def throw(self, *args):
        raise StopIteration

    def __await__(self):
        return iter(())


def test_iscoroutine_agrees_with_asyncio():
    coro = _coroutine()
    samples = [coro, _generator(), _Awaitable(), 1, None, defer.Deferred(), _coroutine, types.SimpleNamespace()]
    try:
        assert [_lean.iscoroutine(x) for x in samples] == [asyncio.iscoroutine(x) for x in samples]
    finally:
        coro.close()


def test_placeholders_act_as_the_real_classes():
    stand_in = _lean._AsyncioStandIn()
    Future, Loop = stand_in.Future, stand_in.AbstractEventLoop
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        assert isinstance(future, Future) and not isinstance(1, Future)
        assert isinstance(loop, Loop)
        assert issubclass(asyncio.Future, Future)
        assert Future[int] == asyncio.Future[int]
        assert Future.add_done_callback is asyncio.Future.add_done_callback
        assert type(Future(loop=loop)) is asyncio.Future
    finally:
        loop.close()


def test_any_other_name_is_the_real_asyncios():
    # As a Twisted release that took more from asyncio would have it: the real module, at once.
    code = (
        "import sys\n"
        "from dispycos import _lean\n"
        "stand_in = sys.modules['asyncio'] = _lean._AsyncioStandIn()\n"
        "from asyncio import get_event_loop_policy\n"
        "import asyncio\n"
        "print(asyncio is not stand_in, get_event_loop_policy is asyncio.get_event_loop_policy)\n"
    )
    out = run_python(code)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_a_lean_process_has_no_asyncio_until_it_imports_it():
    # What a node and its zygote import before the fork (dispycos.scripts,
    # then the servers' modules): no asyncio. Then a task that wants asyncio
    # has the real one, and Deferreds and futures convert both ways.
    code = (
        "import sys, typing\n"
        "import dispycos.scripts\n"
        "from dispycos.node import zygote\n"
        "zygote.preload()\n"
        "print('asyncio' in sys.modules)\n"
        "from twisted.internet import defer\n"
        "from dispycos import _lean\n"
        "assert defer.iscoroutine is _lean.iscoroutine\n"
        "async def two():\n"
        "    return 2\n"
        "d = defer.ensureDeferred(two())\n"
        "print(d.result)\n"
        "import asyncio\n"
        "loop = asyncio.new_event_loop()\n"
        "f = loop.create_future()\n"
        "got = []\n"
        "defer.Deferred.fromFuture(f).addCallback(got.append)\n"
        "f.set_result(3)\n"
        "back = defer.succeed(4).asFuture(loop)\n"
        "loop.run_until_complete(asyncio.sleep(0))\n"
        "print(got[0], loop.run_until_complete(back), isinstance(f, defer.Future))\n"
        "hints = typing.get_type_hints(defer.Deferred.fromFuture)\n"
        "print(typing.get_origin(hints['future']) is asyncio.Future)\n"
        "loop.close()\n"
    )
    out = run_python(code)
    assert out.stdout.split() == ["False", "2", "3", "4", "True", "True"], out.stderr
