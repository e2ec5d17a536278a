"""
The package's layout: every module imports (alone, in a fresh interpreter,
so no import order hides a missing name or a circle), and the public paths
stay where users find them.
"""

import importlib
import pkgutil
import subprocess
import sys

import dispycos

#: Modules that need an optional extra.
OPTIONAL = {"dispycos.joblib": "joblib", "dispycos.client.joblib": "joblib"}
#: Modules that run a program when imported.
PROGRAMS = {"dispycos.server.__main__"}


def _modules():
    for info in pkgutil.walk_packages(dispycos.__path__, "dispycos."):
        if info.name in PROGRAMS:
            continue
        extra = OPTIONAL.get(info.name)
        if extra is not None and importlib.util.find_spec(extra) is None:
            continue
        yield info.name


def test_every_module_imports_on_its_own():
    code = ("import importlib, sys\n"
            "bad = []\n"
            "for name in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k == 'dispycos' or k.startswith('dispycos.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        bad.append('%s: %r' % (name, e))\n"
            "print('\\n'.join(bad))\n")
    names = sorted(_modules())
    assert len(names) > 40, names
    out = subprocess.run([sys.executable, "-c", code] + names, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout


def test_public_paths():
    from dispycos.blocking import Computation, LocalCluster, call  # noqa: F401
    from dispycos.httpd import HTTPServer  # noqa: F401

    for name in ("Computation", "Scheduler", "LocalCluster", "Task", "TaskRef", "RemoteTask", "Channel",
                 "as_completed", "DispycosNodeAllocate"):
        assert getattr(dispycos, name).__module__.startswith("dispycos."), name
    assert importlib.util.find_spec("dispycos.server.__main__") is not None  # python -m dispycos.server


def test_the_blocking_computation_has_every_method_of_the_deferred_one():
    """Wherever a method of Computation is defined (its own class or a part of it), the blocking API has it."""
    import inspect

    from dispycos.blocking import Computation as Blocking
    from dispycos.client.computation import Computation
    from dispycos.client.taskapi import _TaskMethods  # run*, map, run_results: written by hand

    public = {n for n, v in inspect.getmembers(Computation, inspect.isfunction)
              if not n.startswith("_") and n not in vars(_TaskMethods)}
    missing = {n for n in public if not hasattr(Blocking, n)}
    assert not missing, missing
    assert {"servers", "nodes", "tasks", "send_file", "close"} <= public
