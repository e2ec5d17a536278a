# -*- test-case-name: tests.unit.test_tasks -*-
"""What a computation carries: its components, functions and classes by name, and files for every node."""

import inspect
import os
import types

_ANY_CALLABLE = (types.FunctionType, type)


def component_name(obj):
    """The name C{obj} travels by among a computation's components (or None)."""
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)


def collect(components, setups=()):
    """
    The components of a computation, checked: C{(code, files)}, C{code} a
    dict name -> function or class (with the C{setups} functions that are
    not None), C{files} a list of C{(name, path)}, streamed to every node
    when the computation is scheduled.

    @raise TypeError: a component or setup function of the wrong type.
    @raise ValueError: a component without a name or a readable file.
    """
    code, files = {}, []
    for item in components:
        _add_component(code, files, item)
    for fn in setups:
        if fn is not None:
            if not callable(fn):
                raise TypeError("setup function %r is not callable" % (fn,))
            code.setdefault(component_name(fn), fn)
    return code, files


def setup_names(node_setup, server_setup):
    """Component names of C{node_setup} and C{server_setup} (or None)."""
    return (component_name(node_setup) if node_setup else None,
            component_name(server_setup) if server_setup else None)


def _add_component(code, files, item):
    if isinstance(item, str):
        path = os.path.abspath(item)
        if not os.path.isfile(path):
            raise ValueError("component %r is not a readable file" % (item,))
        _add_file(files, path)
    elif isinstance(item, types.ModuleType):
        path = getattr(item, "__file__", None)
        if not path or not path.endswith((".py", ".pyc")):
            raise ValueError("module component %r has no Python source file" % (item.__name__,))
        if path.endswith(".pyc"):
            path = path[:-1]
        _add_file(files, os.path.abspath(path), item.__name__.rpartition(".")[0].replace(".", os.sep))
    elif isinstance(item, _ANY_CALLABLE) or inspect.isroutine(item):
        name = component_name(item)
        if not name:
            raise ValueError("component %r has no name" % (item,))
        code[name] = item
    else:
        raise TypeError("invalid component %r: give functions, classes, modules or file paths" % (item,))


def _add_file(files, path, subdir=None):
    cwd = os.getcwd()
    if subdir is None:
        rel = os.path.relpath(path, cwd)
        name = rel if not rel.startswith("..") else os.path.basename(path)
    else:
        name = os.path.join(subdir, os.path.basename(path)) if subdir else os.path.basename(path)
    if any(n == name for n, _ in files):
        return
    if not os.access(path, os.R_OK):
        raise ValueError("component %r is not readable" % (path,))
    # Streamed to every node when the computation is scheduled (read then, not held here).
    files.append((name, path))
