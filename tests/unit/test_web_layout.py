"""
The monitor's package keeps to its shape: each module small, and none
reaching into private names of other objects (Twisted's, such as
C{request._disconnected}) or importing private names.
"""

import ast
import os

import pytest

import dispycos.web

WEB = os.path.dirname(dispycos.web.__file__)
MODULES = sorted(f for f in os.listdir(WEB) if f.endswith(".py"))


def test_the_modules():
    assert MODULES == ["__init__.py", "actions.py", "auth.py", "model.py", "monitor.py", "pages.py", "resources.py",
                       "service.py", "sse.py"]


def offences_in(source, name):
    """Uses of private names of other objects in C{source}: C{x._y}, C{getattr(x, "_y")}, C{from m import _y}."""
    offences = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                offences.append("%s:%d .%s" % (name, node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
            offences.append("%s:%d %s(%s)" % (name, node.lineno, node.func.id, node.args[1].value))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            offences += ["%s:%d %s" % (name, node.lineno, a.name) for a in node.names if a.name.startswith("_")]
    return offences


@pytest.mark.parametrize("name", MODULES)
def test_small_and_no_private_names_of_others(name):
    with open(os.path.join(WEB, name)) as f:
        source = f.read()
    assert source.count("\n") <= 500, name
    assert offences_in(source, name) == []


def test_the_check_finds_offences():
    source = ("from twisted.web.resource import _UnsafeNoResource\n"
              "def f(self, request):\n"
              "    self._mine = request._disconnected or getattr(request, '_disconnected', False)\n")
    assert sorted(offences_in(source, "m.py")) == ["m.py:1 _UnsafeNoResource", "m.py:3 ._disconnected",
                                                   "m.py:3 getattr(_disconnected)"]
